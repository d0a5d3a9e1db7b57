"""The lecture's tokenizer: one id per distinct character of the text."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy

from minigpt.tokenizers.common import ids_list


class CharTokenizer:
    """Characters to integers and back: each distinct character of the text gets its rank
    in sorted order (Tiny Shakespeare: 65 characters, "\\n" is 0 and " " is 1)."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars = "".join(chars)
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer: characters must be distinct")
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.itos = dict(enumerate(self.chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, s: str, allowed_special: Iterable[str] | str = ()) -> numpy.ndarray:
        """str -> int64 array of token ids. Characters outside the vocabulary raise ValueError.
        (A character vocabulary has no special tokens: ``allowed_special`` is there so that every
        tokenizer is called alike.)"""
        try:
            return numpy.fromiter((self.stoi[c] for c in s), dtype=numpy.int64, count=len(s))
        except KeyError:
            unknown = sorted(set(s) - set(self.stoi))
            raise ValueError("characters not in the vocabulary: " + ", ".join(repr(c) for c in unknown)) from None

    def decode(self, ids: Iterable[int] | Any) -> str:
        """ids (any int sequence or array) -> str."""
        ids = ids_list(ids)
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary (size {self.vocab_size})") from None

    def to_dict(self) -> dict[str, Any]:
        """The whole table, JSON-safe: it rides in the checkpoint."""
        return {"type": "char", "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        """The tokenizer ``to_dict`` describes; a malformed table is a ``ValueError`` saying what is wrong."""
        chars = d.get("chars") if isinstance(d, dict) else None
        if not isinstance(chars, str):
            raise ValueError("malformed char tokenizer table: 'chars' must be the string of its characters")
        return cls(chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"
