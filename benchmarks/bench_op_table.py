"""A training step op class by op class, forward and backward: minigpt beside PyTorch, same shapes, same threads.

    python benchmarks/bench_op_table.py                    # nanoGPT's CPU recipe (--preset nanogpt)
    python benchmarks/bench_op_table.py --recipe default   # minigpt's default CPU recipe
    python benchmarks/bench_op_table.py --rounds 9 --repeats 10
    python benchmarks/bench_op_table.py --cold 16           # and a second table: each call's data out of the caches

Every call a step of the recipe makes is run on its own, at its shape: minigpt as fast.GPT calls it
(its fast twins), PyTorch eager as nanoGPT's model calls it (benchmarks/torch_gpt.py), one right
after the other for each op class, the first of the two alternating round by round, so that both
see the same machine load. The median forward and the median backward
of each call, times the calls per step, give each op class's milliseconds per step. AdamW and
gradient clipping are timed over the two models' real parameters. Then whole steps of both
(bench_train.py's), so the table can be set beside the step: what the classes leave out is the
autograd bookkeeping, the graph's glue and Python. Needs PyTorch (pip install -e ".[bench]").

Run on its own, each call finds its inputs and its output buffers in the CPU's caches, from its
last repeat. In a step they are not all there: a backward reads what the forward saved long before,
and outputs go to memory other ops used last. ``--cold MIB`` also times every call, in the same
rounds, after reading an array of MIB mebibytes before each timed forward, backward and optimizer
step (untimed; each framework reads it on its own threads, so both cores' private caches lose
what they held: NumPy through its BLAS, which splits a matrix-vector product over its threads
only from a few MiB up, so give 16), and prints that table too. The "ratio" column is the ratio of the two medians;
"round ratios" the middle half of the rounds' own ratios, which need not contain it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import MinigptStep, TorchStep, machine, make_batches, time_steps  # noqa: E402

from minigpt import Tensor, fast, optim  # noqa: E402
from minigpt.fast.functional import GELU, ResidualAdd  # noqa: E402
from minigpt.nn import GPTConfig  # noqa: E402
from minigpt.tensor import Function  # noqa: E402
from minigpt.training.config import TrainConfig  # noqa: E402


@dataclasses.dataclass
class Call:
    """One op call of a step: its inputs, minigpt's and PyTorch's way of making the output from
    them, how often a step makes it, which inputs are parameters (leaves of the graph in a step;
    the others are activations, made by the op before), and whether minigpt's op writes over its
    input (as fast.GPT's GELU and residual adds do, over arrays nothing else reads)."""

    inputs: list[np.ndarray]
    ours: Callable[..., Any]
    theirs: Callable[..., Any]
    per_step: int
    params: tuple[int, ...] = ()
    inplace: bool = False


class Activation(Function):
    """An activation as a step has it: made by an earlier op, so its gradient goes on to that op
    and is not stored (a leaf's would be copied into ``.grad``, which a step does for parameters
    only). Here the gradient stops."""

    def forward(self, x: Any) -> Any:
        return x

    def backward(self, dy: Any) -> None:
        return None


class Seed(Function):
    """The gradient that the next op would send back, handed over as it is: ``out.backward(seed)``
    would copy it first, which a step never does."""

    def forward(self, out: Any, seed: Any) -> Any:
        self.seed = seed
        return out.reshape(-1)[:1].sum() * 0  # a 0-d output, so that backward() needs no gradient

    def backward(self, dy: Any) -> tuple[Any, None]:
        return self.seed, None


def recipe(name: str) -> tuple[TrainConfig, GPTConfig]:
    cfg = TrainConfig.preset(preset="nanogpt" if name == "nanogpt" else None)
    mcfg = GPTConfig(block_size=cfg.block_size, vocab_size=65, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    return cfg, mcfg


def op_classes(cfg: TrainConfig, mcfg: GPTConfig, rng: np.random.Generator) -> dict[str, list[Call]]:
    """op class -> the calls one training step makes of it (nanoGPT's model: GPT-2's blocks)."""
    import torch
    import torch.nn.functional as TF

    B, T, C, nh, V, L = cfg.batch_size, cfg.block_size, mcfg.n_embd, mcfg.n_head, mcfg.vocab_size, mcfg.n_layer
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    bias = mcfg.bias

    def linear(n_in: int, n_out: int, per_step: int, has_bias: bool = bias) -> Call:
        inputs = [f32(B, T, n_in), f32(n_out, n_in) * 0.02] + ([f32(n_out)] if has_bias else [])
        return Call(inputs, fast.linear, TF.linear, per_step, params=(1, 2))

    def torch_attention(qkv: Any) -> Any:  # nanoGPT's CausalSelfAttention between c_attn and c_proj
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in qkv.split(C, dim=2))
        y = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        return y.transpose(1, 2).contiguous().view(B, T, C)

    idx, targets = rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))
    idx_t, targets_t, pos_t = torch.from_numpy(idx), torch.from_numpy(targets), torch.arange(T)
    ln = [f32(B, T, C), 1 + 0.1 * f32(C)] + ([0.1 * f32(C)] if bias else [])
    return {
        "linear": [linear(C, 3 * C, L), linear(C, C, L), linear(C, 4 * C, L), linear(4 * C, C, L),
                   linear(C, V, 1, has_bias=False)],
        "causal self-attention": [Call([f32(B, T, 3 * C)], lambda qkv: fast.causal_self_attention(qkv, nh),
                                       torch_attention, L)],
        "layer norm": [Call(ln, lambda x, *wb: fast.layer_norm(x, *wb),
                            lambda x, *wb: TF.layer_norm(x, (C,), *wb), 2 * L + 1, params=(1, 2))],
        "GELU": [Call([f32(B, T, 4 * C)], lambda h: GELU.apply(h, inplace=True),
                      lambda x: TF.gelu(x, approximate="tanh"), L, inplace=True)],
        "residual add": [Call([f32(B, T, C), f32(B, T, C)], lambda x, f: ResidualAdd.apply(x, f, inplace=True),
                              lambda x, f: x + f, 2 * L, inplace=True)],
        "embedding + positions": [Call([f32(V, C) * 0.02, f32(mcfg.block_size, C) * 0.02],
                                       lambda wte, wpe: fast.embedding(idx, wte) + wpe[:T],
                                       lambda wte, wpe: TF.embedding(idx_t, wte) + TF.embedding(pos_t, wpe), 1,
                                       params=(0, 1))],
        "cross-entropy": [Call([f32(B, T, V)], lambda z: fast.cross_entropy(z, targets, ignore_index=-1),
                               lambda z: TF.cross_entropy(z.view(-1, V), targets_t.view(-1), ignore_index=-1), 1)],
    }


def time_call(call: Call, framework: str, repeats: int,
              evict: Callable[[], Any] = lambda: None) -> tuple[list[float], list[float]]:
    """``repeats`` forward and backward times of one call, each on a fresh graph, each framework's
    gradient from the next op (ones) made before its backward is timed; ``evict`` runs (untimed)
    just before each timed forward and backward."""
    import torch

    fwd, bwd = [], []
    for _ in range(repeats):
        if framework == "minigpt":
            arrays = [a.copy() if call.inplace else a for a in call.inputs]  # an in-place op writes over them
            leaves = [Tensor(a, requires_grad=True) for a in arrays]
            ins = [t if i in call.params else Activation.apply(t) for i, t in enumerate(leaves)]
            evict()
            t0 = time.perf_counter()
            out = call.ours(*ins)
            t1 = time.perf_counter()
            root = Seed.apply(out, np.ones(out.shape, np.float32))
            evict()
            t2 = time.perf_counter()
            root.backward()
        else:
            leaves = [torch.from_numpy(a).requires_grad_() for a in call.inputs]
            evict()
            t0 = time.perf_counter()
            out = call.theirs(*leaves)
            t1 = time.perf_counter()
            seed = torch.ones_like(out)
            evict()
            t2 = time.perf_counter()
            out.backward(seed)
        t3 = time.perf_counter()
        fwd.append(t1 - t0)
        bwd.append(t3 - t2)
    return fwd, bwd


def optimizer_steps(cfg: TrainConfig, mcfg: GPTConfig, threads: int) -> dict[str, Callable[[], None]]:
    """Each framework's clip + AdamW step over its model's parameters, gradients in place."""
    import torch

    batches = make_batches(cfg, 2)
    ours, theirs = MinigptStep(cfg, mcfg), TorchStep(cfg, mcfg, threads)
    for step in (ours, theirs):
        time_steps(step, batches, 2, 0)  # gradients and optimizer state exist

    def ours_step() -> None:
        optim.clip_grad_norm_(ours.model.parameters(), cfg.grad_clip)
        ours.opt.step()

    def theirs_step() -> None:
        torch.nn.utils.clip_grad_norm_(theirs.model.parameters(), cfg.grad_clip)
        theirs.opt.step()

    return {"minigpt": ours_step, "pytorch": theirs_step}


def spread(ratios: list[float]) -> str:
    """The middle half of a class's per-round ratios (its interquartile range), as "q1-q3": how
    far one round's ratio can be trusted on this machine."""
    if len(ratios) < 2:
        return ""
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return f"{q1:.2f}-{q3:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=["nanogpt", "default"], default="nanogpt")
    p.add_argument("--rounds", type=int, default=7, help="rounds (each op class: minigpt and PyTorch in turn)")
    p.add_argument("--repeats", type=int, default=8, help="timed calls per op per framework per round")
    p.add_argument("--steps", type=int, default=10, help="whole steps per framework per round")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch intra-op threads")
    p.add_argument("--cold", type=float, default=0.0, metavar="MIB",
                   help="also time every call after reading an array of MIB mebibytes (a second table; 16 empties "
                        "a 2-core machine's private caches)")
    args = p.parse_args()
    try:
        import torch
    except ImportError:
        raise SystemExit("bench_op_table.py compares with PyTorch: pip install -e \".[bench]\"") from None
    torch.set_num_threads(args.threads)
    fast.keep_freed_memory()  # as minigpt.train does (process-wide: PyTorch gains from it too)
    cfg, mcfg = recipe(args.recipe)
    classes = op_classes(cfg, mcfg, np.random.default_rng(0))
    opt = optimizer_steps(cfg, mcfg, args.threads)
    whole = {"minigpt": MinigptStep(cfg, mcfg), "pytorch": TorchStep(cfg, mcfg, args.threads)}
    batches = make_batches(cfg, 64)
    frameworks = ("minigpt", "pytorch")

    def nothing() -> None:
        pass

    modes = {"caches warm": {f: nothing for f in frameworks}}  # mode -> framework -> what runs before a timing
    if args.cold:
        sweep = np.ones((max(1, int(args.cold * (1 << 20)) // 4096), 1024), np.float32)  # (rows, 1024)
        ones, torch_sweep = np.ones(1024, np.float32), torch.from_numpy(sweep)
        # each framework reads the array on its own threads, both cores' caches alike: NumPy through its BLAS
        # (a matrix-vector product), PyTorch by a sum; so its threads are awake when its op starts, as in a step
        modes[f"{args.cold:g} MiB read before each timed call"] = {"minigpt": lambda: sweep @ ones,
                                                                  "pytorch": lambda: torch_sweep.sum()}
    # samples[mode][class][framework] = (forward ms/step, backward ms/step) per round
    samples: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {
        m: {c: {f: [] for f in frameworks} for c in [*classes, "AdamW + clip"]} for m in modes}
    steps: dict[str, list[float]] = {f: [] for f in frameworks}
    for f in frameworks:  # warm-up
        time_steps(whole[f], batches, 3, 0)
        for calls in classes.values():
            for call in calls:
                time_call(call, f, 2)
    for r in range(args.rounds):  # within a round, each class's two frameworks one right after the other
        order = frameworks if r % 2 == 0 else frameworks[::-1]  # and which goes first alternates
        for name, calls in classes.items():
            for f in order:
                for mode, before in modes.items():  # warm, then cold, in the same round
                    fwd = bwd = 0.0
                    for call in calls:
                        tf, tb = time_call(call, f, args.repeats, before[f])
                        fwd += statistics.median(tf) * call.per_step
                        bwd += statistics.median(tb) * call.per_step
                    samples[mode][name][f].append((fwd * 1e3, bwd * 1e3))
        for f in order:
            for mode, before in modes.items():
                times = []
                for _ in range(args.repeats):
                    before[f]()
                    t0 = time.perf_counter()
                    opt[f]()
                    times.append(time.perf_counter() - t0)
                samples[mode]["AdamW + clip"][f].append((statistics.median(times) * 1e3, 0.0))
        for f in order:
            steps[f] += time_steps(whole[f], batches, args.steps, r * args.steps)

    print(f"machine: {machine()}; PyTorch {torch.__version__}, {args.threads} threads")
    print(f"recipe: {args.recipe} ({mcfg.n_layer} layers, {mcfg.n_head} heads, {mcfg.n_embd} wide, batch "
          f"{cfg.batch_size} x block {cfg.block_size}); medians of {args.rounds} rounds, ms per step")
    med = {f: statistics.median(steps[f]) * 1e3 for f in frameworks}
    for mode, per_class in samples.items():
        print_table(mode, per_class, med)


def print_table(mode: str, per_class: dict[str, dict[str, list[tuple[float, float]]]], step: dict[str, float]) -> None:
    """One table: each class's median forward, backward and total per framework, their ratio and
    the spread of the rounds' ratios; the sum of the classes, and the whole step beside it."""
    frameworks = ("minigpt", "pytorch")
    print(f"\n{mode}:")
    print(f"| {'op class':24s} | minigpt fwd | bwd | total | PyTorch fwd | bwd | total | ratio | round ratios |")
    print("|" + "|".join("---" for _ in range(9)) + "|")
    sums = {f: 0.0 for f in frameworks}
    for name, per in per_class.items():
        cells = []
        totals = {}
        for f in frameworks:
            fwd = statistics.median(s[0] for s in per[f])
            bwd = statistics.median(s[1] for s in per[f])
            totals[f] = fwd + bwd
            sums[f] += totals[f]
            cells += [f"{fwd:.2f}", f"{bwd:.2f}" if bwd else "", f"{totals[f]:.2f}"]
        print(f"| {name:24s} | " + " | ".join(cells) + f" | {totals['minigpt'] / totals['pytorch']:.2f} | "
              f"{spread([sum(a) / sum(b) for a, b in zip(per['minigpt'], per['pytorch'])])} |")
    print(f"| {'sum of the classes':24s} | | | {sums['minigpt']:.2f} | | | {sums['pytorch']:.2f} | "
          f"{sums['minigpt'] / sums['pytorch']:.2f} | |")
    print(f"| {'whole step':24s} | | | {step['minigpt']:.2f} | | | {step['pytorch']:.2f} | "
          f"{step['minigpt'] / step['pytorch']:.2f} | |")


if __name__ == "__main__":
    main()
