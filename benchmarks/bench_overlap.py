"""Could the all-reduce hide behind the backward pass, as DDP's gradient buckets do? Measured.

    python benchmarks/bench_overlap.py               # 2 ranks (mpiexec -n 2), nanoGPT's CPU recipe
    python benchmarks/bench_overlap.py --ranks 4 --steps 60

Each rank runs its share (B/N rows) of nanoGPT's CPU recipe and times, round after round:
  backward only   forward + backward, no all-reduce;
  sequential      forward + backward, then one blocking all-reduce of a gradient-sized buffer
                  (what minigpt.distributed does);
  overlapped      the same all-reduce started, non-blocking, before the backward pass, pushed on by
                  an MPI progress call after every op's backward, then waited for.
"overlapped" is a bound on what buckets could gain: the whole all-reduce gets the whole backward
pass to hide behind (buckets get less: a bucket is ready only once its gradients are), and the
buffer it sums is not the gradients (they do not exist yet), so it is timing only.
On one machine the ranks' all-reduce is copies and additions through shared memory, done by the
same cores that run the backward pass; only the waiting can hide. Prints medians per rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import MinigptStep, configs, machine, make_batches, run_mpiexec  # noqa: E402
from profile_step import all_functions  # noqa: E402

from minigpt import distributed  # noqa: E402
from minigpt.tensor import Tensor  # noqa: E402

_request = None  # the all-reduce in flight, poked after every op's backward


def poke_after_every_backward() -> None:
    """Wrap every op's backward so that it calls MPI's progress engine (Request.Test) when done."""
    for cls in set(all_functions()):
        if "backward" in vars(cls):
            def wrapped(self, *args, _backward=vars(cls)["backward"], **kwargs):
                out = _backward(self, *args, **kwargs)
                if _request is not None:
                    _request.Test()
                return out
            cls.backward = wrapped


def child(steps: int) -> None:
    from mpi4py import MPI  # noqa: PLC0415

    world = distributed.world()
    cfg, mcfg = configs()
    cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // world.size)  # this rank's rows
    batches = make_batches(cfg, 32)
    step = MinigptStep(cfg, mcfg)
    buf = np.ones(sum(p.size for p in step.model.parameters()), dtype=np.float32)  # one gradient's size
    poke_after_every_backward()

    def forward_backward(x: np.ndarray, y: np.ndarray) -> Tensor:
        _, loss = step.model(x, y)
        step.opt.zero_grad()
        return loss

    def backward_only(x: np.ndarray, y: np.ndarray) -> None:
        forward_backward(x, y).backward()

    def sequential(x: np.ndarray, y: np.ndarray) -> None:
        forward_backward(x, y).backward()
        world.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def overlapped(x: np.ndarray, y: np.ndarray) -> None:
        global _request
        loss = forward_backward(x, y)
        _request = world.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        loss.backward()
        _request.Wait()
        _request = None

    ways = (backward_only, sequential, overlapped)
    times: dict[str, list[float]] = {f.__name__: [] for f in ways}
    for i in range(5 + steps):
        x, y = batches[i % len(batches)]
        for f in ways:
            buf[:] = 1.0  # the sums must not grow without bound
            world.comm.Barrier()  # every way starts with the ranks together
            t0 = time.perf_counter()
            f(x, y)
            if i >= 5:
                times[f.__name__].append(time.perf_counter() - t0)
    if world.rank == 0:
        print(json.dumps({k: statistics.median(v) * 1e3 for k, v in times.items()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each way")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps)
        return
    if args.ranks < 2:
        p.error("--ranks must be at least 2: one process has no all-reduce to overlap")
    out = json.loads(run_mpiexec(["-n", str(args.ranks), sys.executable, __file__, "--child", "--steps",
                                  str(args.steps)]).strip().splitlines()[-1])
    print(f"machine: {machine()}")
    print(f"{args.ranks} ranks, each its share of nanoGPT's CPU recipe; medians of {args.steps} steps, rank 0")
    for name, ms in out.items():
        print(f"{name:15s} {ms:7.2f} ms")
    cost = out["sequential"] - out["backward_only"]
    saved = out["sequential"] - out["overlapped"]
    print(f"the all-reduce adds {cost:.2f} ms to a step; overlapping it with the backward pass "
          f"{'saves' if saved >= 0 else 'adds'} {abs(saved):.2f} ms")


if __name__ == "__main__":
    main()
