"""Measure two numbers docs/derivations.md argues from: attention's score scale, the residual stream's growth.

    python examples/init_scales.py                 # nanoGPT's CPU recipe's GPT (4 x 128) at GPT-2's init
    python examples/init_scales.py --out_dir out   # ... and a model trained with --preset nanogpt in out/

1. Attention's scale 1/√hs. If q and k had unit-variance entries, q·k (a sum of hs products) would
   have variance hs, and softmax over such scores would be nearly one-hot. What are var(q), var(k)
   and var(scores) really, at GPT-2's init and after training?
2. The residual projections' init N(0, 0.02/√(2·n_layer)). Each block adds two branches (attention,
   MLP) to the residual stream; how does the stream's standard deviation grow over the blocks, with
   that scaling and with plain N(0, 0.02)?
"""

from __future__ import annotations

import math
import sys

import numpy as np

import minigpt
from minigpt import checkpoint, cli, nn
from minigpt.data import CharTokenizer, get_batch, load_text, train_val_split
from minigpt.training.config import NANOGPT_CPU_PRESET  # the shape the derivations quote: 4 x 128

# Shape letters: B batch, T time, C channels, nh heads, hs head size.


def preset_gpt(seed: int = 1337) -> nn.GPT:
    minigpt.manual_seed(seed)
    shape = {k: NANOGPT_CPU_PRESET[k] for k in ("block_size", "n_layer", "n_head", "n_embd")}
    return nn.GPT(nn.GPTConfig(vocab_size=65, bias=False, **shape))


@minigpt.no_grad()
def attention_stats(model: nn.GPT, idx: np.ndarray) -> dict[str, float]:
    """var(q), var(k) and var(scores) = var(q·k/√hs) over every head of every layer, on the batch idx."""
    stats = {"q": [], "k": [], "scores": [], "max_weight": []}
    x = model.transformer.wte(idx) + model.transformer.wpe(np.arange(idx.shape[1]))  # (B, T, C)
    for block in model.transformer.h:
        B, T, C = x.shape
        nh = block.attn.n_head
        hs = C // nh
        qkv = block.attn.c_attn(block.ln_1(x)).data  # (B, T, 3C)
        q, k = (qkv[..., i * C:(i + 1) * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for i in range(2))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)  # (B, nh, T, T)
        causal = np.tril(np.ones((T, T), bool))
        att = np.exp(np.where(causal, scores, -np.inf) - np.where(causal, scores, -np.inf).max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        stats["q"].append(q.var())
        stats["k"].append(k.var())
        stats["scores"].append(scores[..., causal].var())
        stats["max_weight"].append(att[..., 8:, :].max(-1).mean())  # rows with at least 9 keys to choose from
        x = block(x)
    return {key: float(np.mean(v)) for key, v in stats.items()}


@minigpt.no_grad()
def stream_stds(model: nn.GPT, idx: np.ndarray) -> list[float]:
    """The residual stream's standard deviation after the embeddings and after each block."""
    x = model.transformer.wte(idx) + model.transformer.wpe(np.arange(idx.shape[1]))
    stds = [float(x.data.std())]
    for block in model.transformer.h:
        x = block(x)
        stds.append(float(x.data.std()))
    return stds


def unscaled(model: nn.GPT, seed: int = 1337) -> nn.GPT:
    """The same model with the residual projections re-drawn at plain N(0, 0.02)."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            p.data[...] = rng.standard_normal(p.shape) * 0.02
    return model


def measurement_batch() -> np.ndarray:
    """32 chunks of 64 characters from the validation split (the same every time): (32, 64) ids."""
    text = load_text()
    tok = CharTokenizer.from_text(text)
    _, val = train_val_split(tok.encode(text))
    return get_batch(val, 32, NANOGPT_CPU_PRESET["block_size"], np.random.default_rng(0))[0]


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default=None, help="also measure the trained model in this run directory")
    args = p.parse_args(argv)
    idx = measurement_batch()  # (32, 64)
    models = {"GPT-2 init": preset_gpt()}
    if args.out_dir:
        models["trained"] = checkpoint.load(args.out_dir).model
    for name, model in models.items():
        s = attention_stats(model, idx)
        print(f"{name}: var(q) {s['q']:.4f}, var(k) {s['k']:.4f}, var(q·k/√hs) {s['scores']:.4f}, "
              f"mean largest attention weight {s['max_weight']:.3f} (uniform over ≥ 9 keys: ≤ 0.111)")
    for name, model in (("residual projections N(0, 0.02/√(2·n_layer))", preset_gpt()),
                        ("residual projections N(0, 0.02)", unscaled(preset_gpt()))):
        print(f"{name}: stream std after the embeddings and each block: " +
              ", ".join(f"{s:.4f}" for s in stream_stds(model, idx)))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
