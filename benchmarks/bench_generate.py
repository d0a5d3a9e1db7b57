"""Tokens/s of GPT.generate with the key/value cache against recomputing the whole context.

    python benchmarks/bench_generate.py                    # GPU-preset shape (6 x 384, block 256) on the CPU
    python benchmarks/bench_generate.py --new_tokens 500 --batch 1

Both runs start from the same seed and must produce identical tokens (checked). Reported:
500 new tokens from a one-token prompt (the window slides after block_size tokens, and from
then on every step must recompute the cropped window: with absolute position embeddings every
key changes when the window moves), and the first block_size - 1 tokens alone (inside the window,
where the cache makes each token cost one position).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import minigpt  # noqa: E402
from bench_train import machine  # noqa: E402
from minigpt import fast  # noqa: E402
from minigpt.nn import GPT, GPTConfig  # noqa: E402


def timed_generate(model: GPT, n: int, batch: int, use_cache: bool, seed: int = 0) -> tuple[np.ndarray, float]:
    minigpt.manual_seed(seed)
    idx = np.zeros((batch, 1), dtype=np.int64)
    t0 = time.perf_counter()
    out = model.generate(idx, n, use_cache=use_cache)
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new_tokens", type=int, default=500)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--n_layer", type=int, default=6)
    p.add_argument("--n_head", type=int, default=6)
    p.add_argument("--n_embd", type=int, default=384)
    p.add_argument("--block_size", type=int, default=256)
    args = p.parse_args()
    minigpt.manual_seed(0)
    model = fast.GPT(GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                          n_embd=args.n_embd)).eval()
    print(f"machine: {machine()}")
    print(f"model: {model.num_params():,} parameters, block {args.block_size}, batch {args.batch}")
    for label, n in ((f"{args.new_tokens} new tokens", args.new_tokens),
                     (f"{args.block_size - 1} new tokens (inside the window)", args.block_size - 1)):
        timed_generate(model, 4, args.batch, True)  # warm-up
        cached, t_cache = timed_generate(model, n, args.batch, True)
        full, t_full = timed_generate(model, n, args.batch, False)
        same = bool((cached == full).all())
        tok = n * args.batch
        print(f"{label}: cache {tok / t_cache:8.1f} tok/s, recompute {tok / t_full:7.1f} tok/s, "
              f"speed-up {t_full / t_cache:5.2f}x, identical tokens: {same}")
        if not same:
            raise SystemExit("the cached and recomputed generations differ")


if __name__ == "__main__":
    main()
