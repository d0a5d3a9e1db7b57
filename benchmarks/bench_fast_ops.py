"""Each fast twin against its reference op, forward + backward, at the shapes of nanoGPT's CPU recipe (--preset nanogpt).

    python benchmarks/bench_fast_ops.py               # medians over alternating rounds
    python benchmarks/bench_fast_ops.py --rounds 3 --repeats 5

Shapes: batch 12 x block 64 (768 rows), C = 128, 4 heads of 32, vocab 65: what one layer of
nanoGPT's CPU recipe feeds each op. Prints, per op, the reference's time, the twin's and their ratio
(the twin's speed-up), with the machine they came from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_train import machine  # noqa: E402

from minigpt import Tensor, fast, nn, optim  # noqa: E402
from minigpt import functional as F  # noqa: E402


def cases(rng: np.random.Generator) -> dict:
    """name -> (reference fn, fast fn, input arrays): each fn maps leaves to an output Tensor."""
    B, T, C, nh, V = 12, 64, 128, 4, 65
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    idx = rng.integers(0, V, size=(B, T))
    return {
        "embedding": (lambda w: F.embedding(idx, w), lambda w: fast.embedding(idx, w), [f32(V, C)]),
        "linear (C -> 4C)": (F.linear, fast.linear, [f32(B, T, C), f32(4 * C, C)]),
        "layer_norm": (F.layer_norm, fast.layer_norm, [f32(B, T, C), f32(C), f32(C)]),
        "gelu (B, T, 4C)": (F.gelu, fast.gelu, [f32(B, T, 4 * C)]),
        "softmax (B, nh, T, T)": (F.softmax, fast.softmax, [f32(B, nh, T, T)]),
        "cross_entropy": (lambda z: F.cross_entropy(z, idx), lambda z: fast.cross_entropy(z, idx), [f32(B, T, V)]),
        "attention": (F.scaled_dot_product_attention, fast.scaled_dot_product_attention,
                      [f32(B, nh, T, C // nh) for _ in range(3)]),
        "attention from packed qkv (fused)": (lambda t: heads_then_attention(t, nh),
                                              lambda t: fast.causal_self_attention(t, nh), [f32(B, T, 3 * C)]),
    }


def heads_then_attention(qkv: Tensor, nh: int) -> Tensor:
    B, T, C3 = qkv.shape
    C = C3 // 3
    q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3) for i in range(3))
    return F.scaled_dot_product_attention(q, k, v).transpose(0, 2, 1, 3).reshape(B, T, C)


def time_op(fn, arrays: list, repeats: int) -> float:
    """Median seconds of forward + backward (with a fixed upstream gradient)."""
    times = []
    for _ in range(repeats):
        leaves = [Tensor(a, requires_grad=True) for a in arrays]
        t0 = time.perf_counter()
        y = fn(*leaves)
        y.backward(np.ones(y.shape, dtype=y.dtype))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_seconds(fn, repeats: int, calls: int = 1) -> float:
    """Median seconds of one ``fn()``, over ``repeats`` timings of ``calls`` calls each (several calls
    per timing for a call too short for the clock alone)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t0) / calls)
    return statistics.median(times)


def time_adamw(make, repeats: int) -> float:
    rng = np.random.default_rng(0)
    model = nn.GPT(nn.GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, bias=False))
    params = list(model.parameters())
    for p in params:
        p.grad = rng.standard_normal(p.shape).astype(np.float32)
    opt = make([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=1e-3)
    opt.step()
    return median_seconds(opt.step, repeats)


def pass_costs(repeats: int) -> dict[str, float]:
    """What one NumPy elementwise pass costs over a (768, 128) float32 array (layer norm's rows at
    nanoGPT's recipe): a multiply by an array of the same shape, and by a row or a column that
    NumPy broadcasts along it (layer norm's · w and · rstd). Median seconds."""
    rng = np.random.default_rng(0)
    x, out = rng.standard_normal((768, 128)).astype(np.float32), np.empty((768, 128), np.float32)
    operands = {"same shape (768, 128)": rng.standard_normal((768, 128)).astype(np.float32),
                "a row (128,), broadcast": rng.standard_normal(128).astype(np.float32),
                "a column (768, 1), broadcast": rng.standard_normal((768, 1)).astype(np.float32)}
    return {name: median_seconds(lambda: np.multiply(x, other, out=out), repeats, calls=20)
            for name, other in operands.items()}


def logits_costs(repeats: int) -> dict[str, float]:
    """Two NumPy passes over the logits of nanoGPT's recipe, (768, 65) float32: the max of each
    row (what the reference's softmax shifts by; NumPy reduces each short row on its own) and the
    exp of every element (what cross-entropy cannot do without). Median seconds."""
    z = np.random.default_rng(0).standard_normal((768, 65)).astype(np.float32)
    return {"the max of each row": median_seconds(lambda: z.max(axis=-1, keepdims=True), repeats, calls=20),
            "exp": median_seconds(lambda: np.exp(z), repeats, calls=20)}


def scatter_costs(repeats: int) -> dict[str, float]:
    """Three NumPy ways to sum the embedding's gradient rows into its table, dweight[idx[n]] +=
    dout[n], at nanoGPT's recipe (768 rows of 128, 65 characters): the twin's one-hot matrix
    product, np.add.at over flat indices, and rows sorted by index then summed per index by
    np.add.reduceat. Median seconds; each is first checked to give the product's sums, to rounding."""
    rng = np.random.default_rng(0)
    V, N, C = 65, 768, 128
    idx, dout = rng.integers(0, V, N), rng.standard_normal((N, C)).astype(np.float32)

    def one_hot_product() -> np.ndarray:
        one_hot_t = np.zeros((V, N), np.float32)
        one_hot_t[idx, np.arange(N)] = 1.0
        return one_hot_t @ dout

    def add_at() -> np.ndarray:
        out = np.zeros(V * C, np.float32)
        np.add.at(out, (idx[:, None] * C + np.arange(C)).ravel(), dout.ravel())
        return out.reshape(V, C)

    def sorted_reduceat() -> np.ndarray:
        order = np.argsort(idx, kind="stable")
        s = idx[order]
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        out = np.zeros((V, C), np.float32)
        out[s[starts]] = np.add.reduceat(dout[order], starts, axis=0)
        return out

    costs = {}
    for name, fn in (("a one-hot matrix product (the twin)", one_hot_product), ("np.add.at, flat indices", add_at),
                     ("sorted rows, np.add.reduceat", sorted_reduceat)):
        np.testing.assert_allclose(fn(), one_hot_product(), rtol=1e-5, atol=1e-5, err_msg=name)
        costs[name] = median_seconds(fn, repeats)
    return costs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (reference, then twin)")
    p.add_argument("--repeats", type=int, default=9, help="timed calls per op per round")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    table = cases(rng)
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for name, (ref_fn, fast_fn, arrays) in table.items():
            for which, fn in (("reference", ref_fn), ("fast", fast_fn)):
                results.setdefault(name, {}).setdefault(which, []).append(time_op(fn, arrays, args.repeats))
        for which, make in (("reference", optim.AdamW), ("fast", fast.AdamW)):
            results.setdefault("AdamW.step (nanoGPT's CPU recipe)", {}).setdefault(which, []).append(
                time_adamw(make, args.repeats))
    print(f"machine: {machine()}")
    print(f"{'op (forward + backward, float32)':36s} {'reference':>10s} {'fast':>10s} {'speed-up':>9s}")
    for name, r in results.items():
        ref_t, fast_t = statistics.median(r["reference"]), statistics.median(r["fast"])
        print(f"{name:36s} {ref_t * 1e3:8.3f}ms {fast_t * 1e3:8.3f}ms {ref_t / fast_t:8.2f}x")
    for title, costs in (("one NumPy multiply over (768, 128) float32, by:", pass_costs),
                         ("over the logits, (768, 65) float32:", logits_costs),
                         ("the embedding's backward scatter, 768 rows of 128 into 65, by:", scatter_costs)):
        print(title)
        for name, t in costs(args.repeats * args.rounds).items():
            print(f"  {name:34s} {t * 1e6:8.1f}us")


if __name__ == "__main__":
    main()
