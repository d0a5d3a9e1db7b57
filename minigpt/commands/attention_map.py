"""Draw where each attention head looks, for a prompt, from a trained run.

    minigpt attention-map --out_dir out --start "ROMEO:"

Writes attention.png into --out_dir (beside the checkpoint file, when one is given there): one panel per head
(rows: layers, columns: heads). In each panel, row t is the position reading and column s the
position read from; brighter means more weight. Everything above the diagonal is 0: a position
never looks at the future. Needs matplotlib (minigpt's plot extra).
"""

from __future__ import annotations

import argparse
import numpy as np

from minigpt import backend, checkpoint, nn
from minigpt.tokenizers import CharTokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out_dir", default="out", help="a run's folder (uses its best.npz) or a checkpoint file; "
                                                    "the picture is written there")
    p.add_argument("--start", default="ROMEO:", help="the prompt whose attention is drawn")


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib  # noqa: PLC0415 - optional

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        raise ValueError("drawing needs matplotlib: pip install matplotlib (minigpt's plot extra)") from None
    ck = checkpoint.load(args.out_dir)
    if not isinstance(ck.model, nn.GPT):
        raise ValueError(f"{ck.path} holds a {type(ck.model).__name__}, which has no attention")
    if ck.tokenizer is None:
        raise ValueError(f"{ck.path} holds no tokenizer, so text cannot be encoded for it")
    if not args.start:
        raise ValueError("--start must hold at least one character")
    png = ck.path.parent / "attention.png"
    ids = ck.tokenizer.encode(args.start)[-ck.model.config.block_size:]
    maps = backend.to_numpy(ck.model.attention_maps(ids[None, :]))[:, 0]  # (n_layer, nh, T, T)
    L, H, T, _ = maps.shape
    labels = [repr(ck.tokenizer.decode([i]))[1:-1] for i in ids.tolist()]  # one per token
    fig, axes = plt.subplots(L, H, figsize=(2.6 * H, 2.6 * L + 0.4), dpi=100, squeeze=False)
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ticks = np.arange(T)
            ax.set_xticks(ticks, labels, fontsize=6, rotation=90)
            ax.set_yticks(ticks, labels, fontsize=6)
    fig.suptitle(f"attention for {args.start!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    unit = "characters" if isinstance(ck.tokenizer, CharTokenizer) else "tokens"
    print(f"wrote {png}: {L} layer(s) x {H} heads over {T} {unit}")
    return 0
