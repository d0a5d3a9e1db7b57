"""Time minigpt's BPE: training it on Tiny Shakespeare, and encoding the text, beside the references.

    python benchmarks/bench_tokenizer.py [--vocab_size 1024 --rounds 5]
    python benchmarks/bench_tokenizer.py --long 1,2,4      # also a line of N MB without spaces

Training: ``BPETokenizer.train`` to --vocab_size tokens (one of them <|endoftext|>), beside Hugging
Face ``tokenizers``' byte-level BPE trainer on the same text and vocabulary (where installed; it
is Rust and uses every core). Encoding: the whole text with a fresh tokenizer (its chunk cache
empty), beside tiktoken with the same rank table. Each is timed --rounds times, alternating;
medians are printed, with the ratio minigpt / reference. --long trains and encodes random
letters without spaces (one chunk), to show the time grows in proportion to the length.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine  # noqa: E402
from minigpt.data import load_text  # noqa: E402
from minigpt.tokenizers import BPETokenizer  # noqa: E402

SPECIAL = "<|endoftext|>"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def hf_train(text: str, vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SPECIAL], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return tok


def tiktoken_of(tok: BPETokenizer):
    import tiktoken

    ranks = {t: i for i, t in tok.vocab.items() if i not in tok.special_tokens.values()}
    return tiktoken.Encoding("bench", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=tok.special_tokens)


def have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab_size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--long", default="", help="comma-separated sizes in MB of a line without spaces")
    args = ap.parse_args()
    text = load_text()
    mb = len(text.encode("utf-8")) / 1e6
    print(f"machine: {machine()}; text: Tiny Shakespeare, {mb:.2f} MB; vocab_size {args.vocab_size}")

    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(timed(lambda: BPETokenizer.train(text, args.vocab_size, special_tokens=[SPECIAL]))[0])
        if have("tokenizers"):
            theirs.append(timed(lambda: hf_train(text, args.vocab_size))[0])
    tok = BPETokenizer.train(text, args.vocab_size, special_tokens=[SPECIAL])
    line = f"train BPE: minigpt {statistics.median(ours):.2f} s"
    if theirs:
        line += (f" | HF tokenizers {statistics.median(theirs):.2f} s | ratio "
                 f"{statistics.median(ours) / statistics.median(theirs):.2f}")
    else:
        line += " | HF tokenizers not installed"
    print(line)

    ours, theirs = [], []
    ref = tiktoken_of(tok) if have("tiktoken") else None
    for _ in range(args.rounds):
        fresh = BPETokenizer.from_dict(tok.to_dict())  # an empty chunk cache
        t, ids = timed(lambda: fresh.encode(text))
        ours.append(t)
        if ref is not None:
            t, ref_ids = timed(lambda: ref.encode_ordinary(text))
            theirs.append(t)
            assert ref_ids == ids.tolist(), "minigpt and tiktoken disagree"
    line = f"encode: minigpt {mb / statistics.median(ours):.2f} MB/s ({len(ids):,} tokens)"
    if theirs:
        line += (f" | tiktoken {mb / statistics.median(theirs):.2f} MB/s | time ratio "
                 f"{statistics.median(ours) / statistics.median(theirs):.2f} (same tokens)")
    else:
        line += " | tiktoken not installed"
    print(line)

    rng = np.random.default_rng(0)
    for size in [float(s) for s in args.long.split(",") if s]:
        n = int(size * 1e6)
        letters = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), n))
        t_train, long_tok = timed(lambda: BPETokenizer.train(letters, args.vocab_size))
        t_enc, _ = timed(lambda: long_tok.encode(letters))
        print(f"a line of {size:g} MB without spaces: train {t_train:.1f} s, encode {t_enc:.1f} s")


if __name__ == "__main__":
    main()
