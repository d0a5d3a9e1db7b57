"""Tokenizers: text -> integer ids -> text.

    CharTokenizer   one id per distinct character (the lecture's; char.py)
    BPETokenizer    byte-level BPE trained from text (byte_level.py; the algorithm: bpe.py, and
                    its fast twin bpe_fast.py)
    GPT2Tokenizer   GPT-2's own BPE, read from its files (gpt2.py)

Every one has ``encode(s)`` -> int64 array, ``decode(ids)`` -> str, ``vocab_size``, and
``to_dict()`` / ``from_dict(d)``: the whole tables as JSON, which ride in a checkpoint.
"""

from __future__ import annotations

from typing import Any

from minigpt.tokenizers.byte_level import BPETokenizer
from minigpt.tokenizers.char import CharTokenizer
from minigpt.tokenizers.gpt2 import GPT2Tokenizer

Tokenizer = CharTokenizer | BPETokenizer  # GPT2Tokenizer is a BPETokenizer
KINDS = {"char": CharTokenizer, "bpe": BPETokenizer, "gpt2": GPT2Tokenizer}

__all__ = ["BPETokenizer", "CharTokenizer", "GPT2Tokenizer", "Tokenizer", "from_dict"]


def from_dict(d: dict[str, Any]) -> Tokenizer:
    """The tokenizer a ``to_dict()`` table describes (its ``"type"`` says which kind);
    a ``ValueError`` for a table that is not one."""
    if not isinstance(d, dict) or d.get("type") not in KINDS:
        kind = d.get("type") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"unknown tokenizer type {kind!r} (known: {', '.join(KINDS)})")
    return KINDS[d["type"]].from_dict(d)
