"""Train nanoGPT's CPU recipe in PyTorch, with minigpt's batches and whole-split evaluation: the
reference that minigpt's results table is compared with.

    python benchmarks/torch_train_reference.py --seed 1337            # GELU tanh, as minigpt
    python benchmarks/torch_train_reference.py --seed 1337 --gelu erf  # nanoGPT's exact GELU

Same recipe as `python examples/train_shakespeare.py --preset nanogpt --seed S` (nanoGPT's CPU recipe: 4 x 128,
block 64, batch 12, 2000 iterations, lr 1e-3 -> 1e-4 with warmup 100, AdamW beta2 0.99, weight
decay 0.1 on 2-D weights, clip 1.0, no biases), batches drawn by minigpt.data.get_batch from
numpy's generator with that seed, and the loss over every token of the validation split as
minigpt.train.split_loss computes it. Needs torch (pip install -e ".[bench]"); the text is
--data (a path or URL), else $MINIGPT_DATA, else the Tiny Shakespeare shipped inside minigpt.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_gpt import TorchGPT, adamw_like_nanogpt  # noqa: E402

from minigpt.data import CharTokenizer, get_batch, load_source, train_val_split  # noqa: E402
from minigpt.nn import GPTConfig  # noqa: E402
from minigpt.optim import cosine_lr  # noqa: E402
from minigpt.training.config import TrainConfig  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--gelu", choices=["tanh", "erf"], default="tanh")
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    cfg = TrainConfig.preset(preset="nanogpt")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    text = load_source(args.data)
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(tok.encode(text))
    model = TorchGPT(GPTConfig(block_size=cfg.block_size, vocab_size=tok.vocab_size, n_layer=cfg.n_layer,
                               n_head=cfg.n_head, n_embd=cfg.n_embd, bias=cfg.bias), gelu=args.gelu)
    opt = adamw_like_nanogpt(model, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    for it in range(cfg.max_iters):
        lr = cosine_lr(it, lr=cfg.learning_rate, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters,
                       lr_decay_iters=cfg.lr_decay_iters)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, cfg.batch_size, cfg.block_size, rng)
        _, loss = model(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
    model.eval()
    total, n = 0.0, len(val) - 1
    with torch.no_grad():  # consecutive block_size chunks, every target once, as minigpt.train.split_loss
        for s in range(0, n, cfg.block_size):
            e = min(s + cfg.block_size, n)
            logits, _ = model(torch.from_numpy(val[s:e][None]))
            total += TF.cross_entropy(logits[0], torch.from_numpy(val[s + 1:e + 1]), reduction="sum").item()
    print(f"pytorch {torch.__version__}, seed {args.seed}, gelu {args.gelu}: val loss over the whole split "
          f"{total / n:.4f} ({cfg.max_iters} iterations, {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
