"""Where a training step's time goes: each op's forward and backward, the optimizer, the rest.

    python benchmarks/profile_step.py            # nanoGPT's CPU recipe, 30 steps after 5 of warm-up

Every ``Function`` subclass's forward and backward is wrapped with a timer, as are AdamW.step
and clip_grad_norm_; "autograd + glue" is what remains of the step (graph bookkeeping,
gradient accumulation, Python). Times are per step, averaged. Then the page faults a step takes
(memory the kernel hands over afresh): a handful means each step reuses the blocks of the last.
"""

from __future__ import annotations

import argparse
import collections
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import MinigptStep, configs, make_batches, machine  # noqa: E402

from minigpt import fast, optim  # noqa: E402
from minigpt.tensor import Function  # noqa: E402

totals: dict[str, float] = collections.defaultdict(float)


def all_functions(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_functions(sub)


def timed(name: str, fn):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - t0

    return wrapper


def instrument() -> None:
    for cls in set(all_functions()):
        for phase in ("forward", "backward"):
            if phase in vars(cls):
                where = "fast." if cls.__module__.startswith("minigpt.fast") else ""
                setattr(cls, phase, timed(f"{where}{cls.__name__}.{phase}", vars(cls)[phase]))
    optim.AdamW.step = timed("AdamW.step", optim.AdamW.step)
    fast.AdamW.step = timed("fast.AdamW.step", fast.AdamW.step)
    optim.clip_grad_norm_ = timed("clip_grad_norm_", optim.clip_grad_norm_)
    import bench_train

    bench_train.optim.clip_grad_norm_ = optim.clip_grad_norm_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--reference", action="store_true", help="profile the plain reference (nn.GPT, optim.AdamW)")
    args = p.parse_args()
    cfg, mcfg = configs()
    batches = make_batches(cfg, args.steps + args.warmup)
    step = MinigptStep(cfg, mcfg, reference=args.reference)
    for x, y in batches[: args.warmup]:
        step(x, y)
    instrument()
    totals.clear()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    for x, y in batches[args.warmup:]:
        step(x, y)
    wall = (time.perf_counter() - t0) / args.steps
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps
    print(f"machine: {machine()}")
    ops = "reference ops" if args.reference else "fast twins"
    print(f"step: {wall * 1e3:.2f} ms (nanoGPT's CPU recipe, {ops}, mean of {args.steps})")
    print(f"{'where':40s} {'ms/step':>8s} {'share':>6s}")
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    for name, t in rows:
        print(f"{name:40s} {t / args.steps * 1e3:8.2f} {t / args.steps / wall:6.1%}")
    rest = wall - sum(totals.values()) / args.steps
    print(f"{'autograd + glue (the rest)':40s} {rest * 1e3:8.2f} {rest / wall:6.1%}")
    # a page fault is memory the kernel hands over afresh (and zeroes): few means malloc reuses its blocks
    print(f"page faults per step: {faults:.1f}")


if __name__ == "__main__":
    main()
