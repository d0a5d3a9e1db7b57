"""Does fine-tuning from a Hugging Face GPT-2 folder work? Pretrain here, export, fine-tune elsewhere.

    python benchmarks/finetune_evidence.py [--steps 300]

1. Pretrain a small GPT-2-shaped model (4 layers of 128, BPE of 1,024 tokens) on the first half of
   Tiny Shakespeare: `minigpt train --data A --tokenizer bpe ...`.
2. Export it as a Hub-format folder (`model.save_pretrained(dir, tokenizer)`).
3. Fine-tune it on the second half: `minigpt train --init_from dir --data B --max_iters STEPS`.
4. Train the same model from scratch on the second half for the same steps, same schedule.

Prints each run's whole-validation-split loss of the second half in bits per character (the two
tokenizers differ: the pretrained one was trained on A, the scratch one on B), with the loss of the
pretrained weights on it before fine-tuning.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine  # noqa: E402
from minigpt import checkpoint  # noqa: E402
from minigpt.data import load_text  # noqa: E402

SHAPE = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--batch_size", "12"]
SCHEDULE = ["--learning_rate", "1e-3", "--min_lr", "1e-4", "--warmup_iters", "30", "--eval_interval", "100", "--sample_chars", "0"]


def train(*flags: str) -> tuple[float, str]:
    text = subprocess.run([sys.executable, "-m", "minigpt", "train", *flags], capture_output=True, text=True,
                          check=True).stdout
    bpc = float(re.search(r"whole validation split .*?, ([\d.]+) bits per character", text).group(1))
    return bpc, text


def whole_val_bpc(folder: Path, text: str) -> float:
    """The whole-validation-split loss of ``text`` under the weights in ``folder``, bits per character,
    scored as `minigpt train` scores it (training/text.py, training/evaluate.py)."""
    import math

    from minigpt import nn, pretrained
    from minigpt.data import train_val_split
    from minigpt.training.evaluate import split_loss

    model, tok = nn.GPT.from_pretrained(folder), pretrained.load_tokenizer(folder)
    ids = tok.encode(train_val_split(text)[1], allowed_special="all")
    nats = split_loss(model, ids, model.config.block_size)
    return nats * (len(ids) - 1) / len(tok.decode(ids[1:])) / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--pretrain_steps", type=int, default=1000)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    text = load_text()
    half = len(text) // 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "a.txt").write_text(text[:half], encoding="utf-8")
        (tmp / "b.txt").write_text(text[half:], encoding="utf-8")
        n = str(args.pretrain_steps)
        pre, _ = train("--data", str(tmp / "a.txt"), "--out_dir", str(tmp / "pre"), "--tokenizer", "bpe",
                       "--vocab_size", "1024", *SHAPE, *SCHEDULE, "--max_iters", n, "--lr_decay_iters", n)
        ck = checkpoint.load(tmp / "pre")
        ck.model.save_pretrained(tmp / "hf", tokenizer=ck.tokenizer)
        steps = ["--max_iters", str(args.steps), "--lr_decay_iters", str(args.steps)]
        tuned, log = train("--init_from", str(tmp / "hf"), "--data", str(tmp / "b.txt"), "--out_dir",
                           str(tmp / "tuned"), "--batch_size", "12", *SCHEDULE, *steps)
        before = whole_val_bpc(tmp / "hf", text[half:])
        scratch, _ = train("--data", str(tmp / "b.txt"), "--out_dir", str(tmp / "scratch"), "--tokenizer", "bpe",
                           "--vocab_size", "1024", *SHAPE, *SCHEDULE, *steps)
    print(f"pretrained on the first half ({args.pretrain_steps} steps): {pre:.4f} bits/char on its own val split")
    print(f"on the second half's val split: pretrained weights before fine-tuning {before:.4f}, "
          f"fine-tuned {args.steps} steps {tuned:.4f}, from scratch {args.steps} steps {scratch:.4f} bits/char")


if __name__ == "__main__":
    main()
