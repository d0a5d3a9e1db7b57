"""Generate text from a trained run, or from GPT-2.

    minigpt sample --out_dir out --start "ROMEO:" --num_samples 3 --max_new_tokens 300
    minigpt sample --out_dir out --start FILE:prompt.txt --temperature 0.8 --top_k 200
    minigpt sample --init_from gpt2 --start "The meaning of life is" --top_p 0.9

--out_dir is a run's folder (its best-val checkpoint, best.npz, is used) or a checkpoint file;
--init_from is GPT-2 (downloaded once from the Hugging Face Hub) or a Hugging Face GPT-2 folder.
The text is written token by token as it is drawn.
"""

from __future__ import annotations

import argparse
import codecs
import sys
from pathlib import Path
from typing import Any

import minigpt
from minigpt import checkpoint, nn, pretrained
from minigpt.nn.gpt import check_vocabulary
from minigpt.training.config import resolve_device
from minigpt.training.evaluate import default_prompt, evaluating
from minigpt.training.metrics import warn_on_stderr


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out_dir", default=argparse.SUPPRESS, help="a run's folder (uses its best.npz) or a checkpoint file "
                                                    "(default: out)")
    p.add_argument("--init_from", default=argparse.SUPPRESS, help="instead of --out_dir: gpt2, gpt2-medium, gpt2-large or gpt2-xl "
                                                      "(the Hugging Face Hub's weights, downloaded once into the "
                                                      "cache) or a folder holding config.json + model.safetensors (default: none)")
    p.add_argument("--start", default="\n", help='the prompt, or "FILE:path" to read it from a file '
                                                  '(default: %(default)r)')
    p.add_argument("--num_samples", type=int, default=3, help="how many samples to write")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample (characters for a char model)")
    p.add_argument("--temperature", type=float, default=0.8, help="< 1 sharper, > 1 more random, 0 greedy")
    p.add_argument("--top_k", type=int, default=200, help="sample among the k most likely tokens only")
    p.add_argument("--top_p", type=float, default=argparse.SUPPRESS, help="nucleus sampling: among the most likely tokens whose "
                                                             "probabilities sum to at least p (default: off)")
    p.add_argument("--seed", type=int, default=1337, help="random seed: the same seed writes the same text")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="where to run the model")


def run(args: argparse.Namespace) -> int:
    for name in ("out_dir", "init_from", "top_p"):  # left out: not set (their help says what that means)
        setattr(args, name, getattr(args, name, None))
    for flag, value, ok, rule in (("num_samples", args.num_samples, args.num_samples >= 1, ">= 1"),
                                  ("max_new_tokens", args.max_new_tokens, args.max_new_tokens >= 0, ">= 0"),
                                  ("temperature", args.temperature, args.temperature >= 0, ">= 0"),
                                  ("top_k", args.top_k, args.top_k >= 1, ">= 1"),
                                  ("top_p", args.top_p, args.top_p is None or 0 < args.top_p <= 1, "in (0, 1]")):
        if not ok:
            raise ValueError(f"--{flag} must be {rule}, got {value}")
    if args.out_dir is not None and args.init_from is not None:
        raise ValueError("--out_dir and --init_from both name a model: give one")
    prompt = args.start
    if prompt.startswith("FILE:"):
        path = Path(prompt[len("FILE:"):])
        try:
            prompt = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the prompt file {path}: {e}") from e
    device = resolve_device(args.device, warn_on_stderr)
    if args.init_from is not None:
        model = nn.GPT.from_pretrained(args.init_from).to(device)
        tokenizer = pretrained.load_tokenizer(args.init_from)
        check_vocabulary(tokenizer.vocab_size, model.config.vocab_size, where=str(args.init_from))
    else:
        ck = checkpoint.load(args.out_dir or "out", device=device)
        if ck.tokenizer is None:
            raise ValueError(f"{ck.path} holds no tokenizer, so text cannot be encoded for it")
        model, tokenizer = ck.model, ck.tokenizer
    if args.start == "\n":  # the default: a newline, or where the vocabulary has none its first token
        prompt = default_prompt(tokenizer)
    ids = tokenizer.encode(prompt, allowed_special="all")  # names any character a char vocabulary lacks
    if len(ids) == 0:
        raise ValueError("--start must hold at least one token (the text to continue)")
    minigpt.manual_seed(args.seed)
    for i in range(args.num_samples):
        stream(model, tokenizer, prompt, ids, args)
        if i + 1 < args.num_samples:
            print("---------------")
    return 0


def stream(model: nn.Module, tokenizer: Any, prompt: str, ids: Any, args: argparse.Namespace) -> None:
    """Write ``prompt``, then each new token's text as it is drawn. A token can end inside a
    character (one byte of a multi-byte one): an incremental UTF-8 decoder holds such bytes back
    until the character is whole."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    by_bytes = hasattr(tokenizer, "decode_bytes")  # BPE tokens are bytes; a char token is a character
    out = sys.stdout

    def write(column: Any) -> None:
        token = [int(column[0])]
        out.write(decoder.decode(tokenizer.decode_bytes(token)) if by_bytes else tokenizer.decode(token))
        out.flush()

    out.write(prompt)
    with evaluating(model):
        model.generate(ids[None, :], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, on_token=write, vocab_limit=tokenizer.vocab_size)
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
