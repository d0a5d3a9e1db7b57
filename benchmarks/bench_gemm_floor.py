"""The matrix products a training step cannot avoid, timed alone: the floor under any step.

    python benchmarks/bench_gemm_floor.py            # nanoGPT's CPU recipe's shapes; PyTorch too when installed
    python benchmarks/bench_gemm_floor.py --ranks 2  # one rank's share of them: batch / 2, one thread each

A step of nanoGPT's CPU recipe must run, per layer, the forward GEMM of each of the four linear layers
(c_attn, attn c_proj, c_fc, mlp c_proj) and the two of backward (dx = dy @ W, dW = dyᵀ @ x),
plus lm_head's three, plus attention's batched products (q @ kᵀ and att @ v forward, four in
backward). This script runs exactly those products on arrays of the step's shapes, nothing else,
through NumPy's BLAS and, where installed, through PyTorch (medians, alternating the two).
Whatever else a step does (GELU, layer norm, softmax, AdamW, autograd) comes on top, so
"floor / PyTorch's whole step" says how much of a target like "0.8 × PyTorch" the products alone use.
With ``--ranks N`` the products are one data-parallel rank's (batch / N rows) and both libraries
get the rank's share of the cores (threadpoolctl for NumPy's BLAS, as minigpt.distributed does);
the other cores stay idle meanwhile, so this is a floor for a rank that runs beside others.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import configs, have_torch, machine  # noqa: E402

from minigpt import distributed  # noqa: E402


def operands(n_layer: int, n_embd: int, n_head: int, block: int, batch: int, vocab: int) -> dict:
    """Random float32 arrays with the shapes of one step's matrix products (one layer's worth,
    reused n_layer times: the shapes, not the values, decide the time)."""
    rng = np.random.default_rng(0)
    N, C, hs = batch * block, n_embd, n_embd // n_head

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    linears = [(3 * C, C), (C, C), (4 * C, C), (C, 4 * C)]  # (out, in) of c_attn, c_proj, c_fc, mlp c_proj
    layer = [(r(N, i), r(o, i), r(N, o)) for o, i in linears]  # x (N, in), W (out, in), dy (N, out)
    head = (r(N, C), r(vocab, C), r(N, vocab))
    BH = batch * n_head
    att = {"q": r(BH, block, hs), "k": r(BH, block, hs), "v": r(BH, block, hs), "dy": r(BH, block, hs),
           "a": r(BH, block, block)}  # a stands for att and for ds, which have the same shape
    return {"n_layer": n_layer, "layer": layer, "head": head, "att": att}


def products(ops: dict) -> list[tuple[str, int, Callable[[], Any]]]:
    """Every matrix product of one step, as (name, times per step, product), on NumPy arrays or
    on torch tensors alike."""
    q, k, v, dyh, a = (ops["att"][n] for n in ("q", "k", "v", "dy", "a"))
    L = ops["n_layer"]
    out: list[tuple[str, int, Callable[[], Any]]] = []
    for name, (x, w, dy) in zip(("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"), ops["layer"]):
        out += [(f"{name} forward", L, lambda x=x, w=w: x @ w.T),  # (N, in) @ (in, out)
                (f"{name} dx", L, lambda dy=dy, w=w: dy @ w),  # (N, out) @ (out, in)
                (f"{name} dW", L, lambda dy=dy, x=x: dy.T @ x)]  # (out, N) @ (N, in)
    out += [("attention q @ kT", L, lambda: q @ k.swapaxes(-1, -2)),  # (BH, T, hs) @ (BH, hs, T)
            ("attention att @ v", L, lambda: a @ v),  # (BH, T, T) @ (BH, T, hs)
            ("attention dv = attT @ dy", L, lambda: a.swapaxes(-1, -2) @ dyh),
            ("attention datt = dy @ vT", L, lambda: dyh @ v.swapaxes(-1, -2)),
            ("attention dq = ds @ k", L, lambda: a @ k),
            ("attention dk = dsT @ q", L, lambda: a.swapaxes(-1, -2) @ q)]
    x, w, dy = ops["head"]
    out += [("lm_head forward", 1, lambda: x @ w.T), ("lm_head dx", 1, lambda: dy @ w),
            ("lm_head dW", 1, lambda: dy.T @ x)]
    return out


def run_products(ops: dict) -> None:
    """One step's matrix products, each as many times as a step runs it."""
    for _, times, product in products(ops):
        for _ in range(times):
            product()


def as_torch(ops: dict) -> dict:
    """The same operands as torch tensors sharing NumPy's memory."""
    import torch

    return {"n_layer": ops["n_layer"],
            "layer": [tuple(torch.from_numpy(m) for m in trio) for trio in ops["layer"]],
            "head": tuple(torch.from_numpy(m) for m in ops["head"]),
            "att": {n: torch.from_numpy(m) for n, m in ops["att"].items()}}


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def by_product(ops: dict, torch_ops: dict | None) -> None:
    """Each product's median time alone, per step (times the number of layers that run it)."""
    torch_columns = f" {'torch ms':>9s} {'ratio':>6s}" if torch_ops else ""
    print(f"{'product':28s} {'x':>2s} {'numpy ms':>9s}{torch_columns}")
    mine_all = products(ops)
    for (name, times, fn), other in zip(mine_all, products(torch_ops) if torch_ops else [None] * len(mine_all)):
        mine = median_ms(fn, 200) * times
        if other is None:
            print(f"{name:28s} {times:2d} {mine:9.3f}")
            continue
        theirs = median_ms(other[2], 200) * times
        print(f"{name:28s} {times:2d} {mine:9.3f} {theirs:9.3f} {mine / theirs:6.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (NumPy, then PyTorch)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per library per round")
    p.add_argument("--threads", type=int, default=None, help="PyTorch intra-op threads (default: all cores)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--by-product", action="store_true", help="also time each product alone (median of 200)")
    p.add_argument("--ranks", type=int, default=1, help="time one data-parallel rank's share (batch / ranks rows)")
    args = p.parse_args()
    cfg, mcfg = configs()
    if args.ranks > 1:
        from threadpoolctl import threadpool_limits  # noqa: PLC0415 - the mpi extra's

        if cfg.batch_size % args.ranks:
            p.error(f"--ranks {args.ranks} does not divide the batch of {cfg.batch_size}")
        cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size // args.ranks)
        args.threads = args.threads or distributed.cores_per_rank(args.ranks)  # all the ranks on this machine
        limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 - held for the run
    ops = operands(mcfg.n_layer, mcfg.n_embd, mcfg.n_head, cfg.block_size, cfg.batch_size, mcfg.vocab_size)
    runners = {"numpy": lambda: run_products(ops)}
    if have_torch() and not args.no_torch:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        torch_ops = as_torch(ops)
        runners["pytorch"] = lambda: run_products(torch_ops)
    if args.by_product:
        by_product(ops, torch_ops if "pytorch" in runners else None)
    for fn in runners.values():  # warm-up
        fn()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, fn in runners.items():
            samples[name].append(median_ms(fn, args.repeats))
    print(f"machine: {machine()}")
    share = f", one of {args.ranks} ranks' share, {args.threads} thread(s)" if args.ranks > 1 else ""
    print(f"the matrix products of one training step of nanoGPT's CPU recipe ({mcfg.n_layer} layers, {mcfg.n_embd} wide, "
          f"block {cfg.block_size}, batch {cfg.batch_size}{share}), nothing else:")
    for name, s in samples.items():
        print(f"{name:8s}: {statistics.median(s):6.2f} ms per step  (rounds: {' '.join(f'{x:.2f}' for x in s)})")


if __name__ == "__main__":
    main()
