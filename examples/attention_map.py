"""Draw where each attention head looks, for a prompt, from a trained checkpoint.

    python examples/attention_map.py --out_dir out --start "ROMEO:" --png attention.png

One panel per head (rows: layers, columns: heads). In each panel, row t is the position reading
and column s the position read from; brighter means more weight. Everything above the diagonal
is 0: a position never looks at the future. Needs matplotlib (pip install -e ".[plot]").
"""

from __future__ import annotations

import sys

import numpy as np

from minigpt import backend, checkpoint, cli, nn


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", default="out", help="run directory (uses best.npz) or checkpoint file")
    p.add_argument("--start", default="ROMEO:\nWhat light through yonder window", help="the prompt")
    p.add_argument("--png", default="attention.png", help="where to write the picture")
    args = p.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError('drawing needs matplotlib: pip install -e ".[plot]"') from None
    ck = checkpoint.load(args.out_dir)
    if not isinstance(ck.model, nn.GPT):
        raise ValueError(f"{ck.path} holds a {type(ck.model).__name__}, which has no attention")
    ids = ck.tokenizer.encode(args.start)[-ck.model.config.block_size:]
    maps = backend.to_numpy(ck.model.attention_maps(ids[None, :]))[:, 0]  # (n_layer, nh, T, T)
    L, H, T, _ = maps.shape
    labels = [repr(c)[1:-1] for c in ck.tokenizer.decode(ids)]
    fig, axes = plt.subplots(L, H, figsize=(2.6 * H, 2.6 * L), dpi=100, squeeze=False)
    for layer in range(L):
        for head in range(H):
            ax = axes[layer][head]
            ax.imshow(maps[layer, head], cmap="viridis", vmin=0, vmax=1)
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ticks = np.arange(T)
            ax.set_xticks(ticks, labels, fontsize=5, rotation=90)
            ax.set_yticks(ticks, labels, fontsize=5)
    fig.suptitle(f"attention for {args.start!r}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.png)
    print(f"wrote {args.png}: {L} layers x {H} heads over {T} characters")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
