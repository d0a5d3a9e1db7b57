"""A run's text: read it, split it 90/10, tokenize it, and know how many characters a token holds.

    text -> first 90% (train) / last 10% (val), split by characters: every tokenizer is scored on
            the same validation text
         -> the tokenizer: char (one id per distinct character of the whole text, the lecture's),
            bpe (byte-level BPE trained on the training split only, so the validation text stays
            unseen) or gpt2 (GPT-2's own)
         -> train_ids, val_ids

The loss is in nats per token, and a token is one character for char but several for BPE, so
losses of different tokenizers cannot be compared. Bits per character can: the validation text's
total loss over its characters, in bits: nats/token x tokens/char / ln 2.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from minigpt.data import load_source, train_val_split
from minigpt.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer

ENDOFTEXT = "<|endoftext|>"  # a BPE trained here has it, as GPT-2's does: documents can be joined by it
DEFAULT_BPE_VOCAB = 512  # --vocab_size when --tokenizer bpe is given without one


@dataclass
class RunText:
    tokenizer: Tokenizer
    train_ids: Any
    val_ids: Any
    bits_per_char: float  # multiplies a loss in nats per token
    chars_per_token: float


def encode(tokenizer: Tokenizer, text: str) -> Any:
    """``text`` as ids; special tokens written in it (<|endoftext|>) are the special tokens."""
    return tokenizer.encode(text, allowed_special="all")


def build_tokenizer(kind: str, vocab_size: int | None, text: str, train_text: str,
                    log: Callable[[str], None], warn: Callable[[str], None]) -> Tokenizer:
    """The tokenizer a run asks for: char from the whole text, BPE trained on ``train_text``, GPT-2's."""
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "gpt2":
        return GPT2Tokenizer.from_pretrained("gpt2")
    t0 = time.time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokenizer = BPETokenizer.train(train_text, vocab_size or DEFAULT_BPE_VOCAB, special_tokens=[ENDOFTEXT])
    for w in caught:
        warn(f"--vocab_size: {w.message}")
    log(f"tokenizer: byte-level BPE of {tokenizer.vocab_size} tokens, trained on the training split in "
        f"{time.time() - t0:.1f} s")
    return tokenizer


def prepare(cfg: Any, log: Callable[[str], None], warn: Callable[[str], None],
            tokenizer: Tokenizer | None = None) -> RunText:
    """The run's text tokenized as ``cfg`` says (``tokenizer``: the one a resumed run was trained with)."""
    text = load_source(cfg.data)
    train_text, val_text = train_val_split(text)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.vocab_size, text, train_text, log, warn)
    train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
    if len(val_ids) <= cfg.block_size:
        raise ValueError(f"the text is too short for block_size {cfg.block_size}: its validation split "
                         f"has {len(val_ids)} tokens, it needs more than {cfg.block_size}")
    # the characters of the tokens the loss scores (all but the first, which nothing predicts)
    chars_per_token = len(tokenizer.decode(val_ids[1:])) / (len(val_ids) - 1)
    return RunText(tokenizer, train_ids, val_ids, 1 / (math.log(2) * chars_per_token), chars_per_token)
