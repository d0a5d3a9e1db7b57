"""``BPETokenizer``: byte-level BPE as a tokenizer: trained from text, encodes, decodes, saves.

Its tables: ``byte_ids`` (the token of each byte: byte b is token b for a BPE trained here),
``merges`` (pairs of ids in the order learned; merge i makes ``merged_ids[i]``, 256 + i here)
and ``special_tokens`` (strings such as "<|endoftext|>" that get ids of their own, after the
merges). The algorithm is in ``bpe.py`` (the plain one, to read) and ``bpe_fast.py`` (its twin,
which this class runs).
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy
import regex

from minigpt.tokenizers import bpe_fast
from minigpt.tokenizers.bpe import GPT2_PATTERN, Pair
from minigpt.tokenizers.common import ids_list


class BPETokenizer:
    """Byte-level BPE with GPT-2's chunking. Build one with :meth:`train` (or ``from_dict``)."""

    kind = "bpe"

    def __init__(self, merges: Sequence[Pair], special_tokens: dict[str, int] | Sequence[str] = (), *,
                 pattern: str = GPT2_PATTERN, byte_ids: Sequence[int] | None = None,
                 merged_ids: Sequence[int] | None = None) -> None:
        self.byte_ids = list(range(256)) if byte_ids is None else [int(i) for i in byte_ids]
        self.merges = [(int(a), int(b)) for a, b in merges]
        first = 256
        self.merged_ids = (list(range(first, first + len(self.merges))) if merged_ids is None
                           else [int(i) for i in merged_ids])
        if not isinstance(special_tokens, dict):  # a sequence: ids after the merges, in its order
            after = max([255, *self.byte_ids, *self.merged_ids]) + 1
            special_tokens = {s: after + i for i, s in enumerate(special_tokens)}
        self.special_tokens = {str(s): int(i) for s, i in special_tokens.items()}
        self.pattern = pattern
        regex.compile(pattern)  # a damaged pattern fails here, not at the first encode
        self._check_tables()
        self.vocab: dict[int, bytes] = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}
        for (a, b), new in zip(self.merges, self.merged_ids):
            self.vocab[new] = self.vocab[a] + self.vocab[b]
        for s, i in self.special_tokens.items():
            self.vocab[i] = s.encode("utf-8")
        self._encoder = bpe_fast.ChunkEncoder(self.byte_ids, dict(zip(self.merges, self.merged_ids)), pattern)
        self._special_re = {}  # the allowed set -> the pattern that finds its tokens in a text

    def _check_tables(self) -> None:
        """Every id defined once, every merge made of tokens that exist before it, merged ids rising
        (encoding merges the smallest id first, so it must be the merge learned first)."""
        if len(self.byte_ids) != 256:
            raise ValueError(f"a byte-level BPE needs a token for each of the 256 bytes, got {len(self.byte_ids)}")
        if len(self.merged_ids) != len(self.merges):
            raise ValueError(f"{len(self.merges)} merges but {len(self.merged_ids)} merged ids")
        ids = [*self.byte_ids, *self.merged_ids, *self.special_tokens.values()]
        if len(set(ids)) != len(ids) or min(ids, default=0) < 0:
            raise ValueError("token ids must be distinct and non-negative")
        known = set(self.byte_ids)
        for r, ((a, b), new) in enumerate(zip(self.merges, self.merged_ids)):
            if a not in known or b not in known:
                raise ValueError(f"merge {r} ({a}, {b}) uses a token that no earlier merge or byte makes")
            if r and new <= self.merged_ids[r - 1]:
                raise ValueError(f"merge {r} makes token {new}, not above the previous merge's {self.merged_ids[r - 1]}")
            known.add(new)
        if any(not s for s in self.special_tokens):
            raise ValueError("a special token cannot be the empty string")

    # ------------------------------------------------------------------ training
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens: Sequence[str] = (), *,
              pattern: str = GPT2_PATTERN) -> BPETokenizer:
        """Learn ``vocab_size - 256 - len(special_tokens)`` merges from ``text``.

        Special tokens found in the text are cut out before counting (they will be tokens of
        their own). A text that runs out of pairs sooner gives a smaller vocabulary, with a
        warning saying so; a ``vocab_size`` below 256 + the special tokens is a ``ValueError``.
        """
        if isinstance(special_tokens, str):
            raise TypeError("special_tokens is a sequence of strings, such as [\"<|endoftext|>\"], not one string")
        special_tokens = list(dict.fromkeys(special_tokens))
        smallest = 256 + len(special_tokens)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, numpy.integer)) or vocab_size < smallest:
            raise ValueError(f"vocab_size must be an integer of at least {smallest} (the 256 bytes"
                             f"{' and the special tokens' if special_tokens else ''}), got {vocab_size!r}")
        text = _without_surrogates(text)
        pieces = cls._special_pattern(special_tokens).split(text) if special_tokens else [text]  # each chunked alone
        wanted = int(vocab_size) - smallest
        merges = bpe_fast.train_merges(pieces, wanted, pattern)
        if len(merges) < wanted:
            warnings.warn(f"the text gives only {len(merges)} merges (every chunk of it is then one token), so "
                          f"the vocabulary has {smallest + len(merges)} tokens, not {vocab_size}", stacklevel=2)
        return cls(merges, special_tokens, pattern=pattern)

    # ------------------------------------------------------------------ encoding and decoding
    @property
    def vocab_size(self) -> int:
        return max(self.vocab) + 1

    @staticmethod
    def _special_pattern(specials: Iterable[str]) -> regex.Pattern:
        return regex.compile("|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)))

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids as a list, special tokens' text treated as any other text."""
        return self._encoder.encode(_without_surrogates(text))

    def encode(self, s: str, allowed_special: Collection[str] | str = ()) -> numpy.ndarray:
        """str -> int64 array of token ids.

        Text that looks like a special token ("<|endoftext|>") is ordinary text unless named in
        ``allowed_special`` (or ``allowed_special="all"``): tiktoken's rule, so text from outside
        cannot smuggle in a control token.
        """
        if not isinstance(s, str):
            raise TypeError(f"encode takes a str, got {type(s).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {', '.join(sorted(map(repr, unknown)))}")
        if not allowed:
            return numpy.array(self.encode_ordinary(s), dtype=numpy.int64)
        key = frozenset(allowed)
        if key not in self._special_re:
            self._special_re[key] = self._special_pattern(allowed)
        ids: list[int] = []
        start = 0
        for m in self._special_re[key].finditer(s):
            ids += self.encode_ordinary(s[start:m.start()])
            ids.append(self.special_tokens[m.group()])
            start = m.end()
        ids += self.encode_ordinary(s[start:])
        return numpy.array(ids, dtype=numpy.int64)

    def decode_bytes(self, ids: Iterable[int] | Any) -> bytes:
        try:
            return b"".join(self.vocab[i] for i in ids_list(ids))
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is outside the vocabulary (size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int] | Any) -> str:
        """ids -> str. A cut through a character's bytes (a token that ends mid-character) decodes
        to U+FFFD, the replacement character, never an exception."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        """The whole tables, JSON-safe: it rides in the checkpoint, so a checkpoint decodes offline."""
        d: dict[str, Any] = {"type": self.kind, "pattern": self.pattern, "merges": [list(p) for p in self.merges],
                             "special_tokens": dict(self.special_tokens)}
        if self.byte_ids != list(range(256)):
            d["byte_ids"] = self.byte_ids
        if self.merged_ids != list(range(256, 256 + len(self.merges))):
            d["merged_ids"] = self.merged_ids
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        """The tokenizer ``to_dict`` describes; a malformed table is a ``ValueError`` saying what is wrong."""
        try:
            tables = [d["merges"], d.get("byte_ids") or [], d.get("merged_ids") or [],
                      list(d.get("special_tokens", {}).values())]
            numbers = [x for t in tables for item in t for x in (item if isinstance(item, list) else [item])]
            if not all(type(x) is int for x in numbers):
                raise ValueError("token ids must be integers")
            return cls([tuple(p) for p in d["merges"]], d.get("special_tokens", {}), pattern=d.get("pattern", GPT2_PATTERN),
                       byte_ids=d.get("byte_ids"), merged_ids=d.get("merged_ids"))
        except (KeyError, TypeError, ValueError, AttributeError, regex.error) as e:
            what = f"no {e.args[0]!r} entry" if isinstance(e, KeyError) else str(e)
            raise ValueError(f"malformed {cls.kind} tokenizer table: {what}") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and other.to_dict() == self.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, merges={len(self.merges)})"


def _without_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (half of a UTF-16 pair, which UTF-8 cannot encode) replaced
    by U+FFFD, as tiktoken does."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return regex.sub("[\ud800-\udfff]", "\ufffd", text)
