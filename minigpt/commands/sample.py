"""Generate text from a trained run.

    minigpt sample --out_dir out --start "ROMEO:" --num_samples 3 --max_new_tokens 300
    minigpt sample --out_dir out --start FILE:prompt.txt --temperature 0.8 --top_k 200

--out_dir is a run's folder (its best-val checkpoint, best.npz, is used) or a checkpoint file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import minigpt
from minigpt import checkpoint
from minigpt.training.config import resolve_device
from minigpt.training.evaluate import generate_text
from minigpt.training.metrics import warn_on_stderr


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out_dir", default="out", help="a run's folder (uses its best.npz) or a checkpoint file")
    p.add_argument("--start", default="\n", help='the prompt, or "FILE:path" to read it from a file '
                                                  '(default: %(default)r)')
    p.add_argument("--num_samples", type=int, default=3, help="how many samples to write")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample (characters for a char model)")
    p.add_argument("--temperature", type=float, default=0.8, help="< 1 sharper, > 1 more random, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens only")
    p.add_argument("--seed", type=int, default=1337, help="random seed: the same seed writes the same text")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run the model")


def run(args: argparse.Namespace) -> int:
    for flag, value, ok, rule in (("num_samples", args.num_samples, args.num_samples >= 1, ">= 1"),
                                  ("max_new_tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0"),
                                  ("temperature", args.temperature, args.temperature >= 0, ">= 0"),
                                  ("top_k", args.top_k, args.top_k >= 1, ">= 1")):
        if not ok:
            raise ValueError(f"--{flag} must be {rule}, got {value}")
    prompt = args.start
    if prompt.startswith("FILE:"):
        path = Path(prompt[len("FILE:"):])
        try:
            prompt = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the prompt file {path}: {e}") from e
    ck = checkpoint.load(args.out_dir, device=resolve_device(args.device, warn_on_stderr))
    if ck.tokenizer is None:
        raise ValueError(f"{ck.path} holds no tokenizer, so text cannot be encoded for it")
    ck.tokenizer.encode(prompt)  # names any character the vocabulary lacks
    minigpt.manual_seed(args.seed)
    for i in range(args.num_samples):
        print(generate_text(ck.model, ck.tokenizer, prompt, args.max_new_tokens,
                            temperature=args.temperature, top_k=args.top_k))
        if i + 1 < args.num_samples:
            print("---------------")
    return 0
