"""Byte-pair encoding, the plain algorithm: what GPT-2's tokenizer does, written to be read.

A character vocabulary knows only the characters of its text. Byte-level BPE starts from the
256 possible bytes instead, so any text encodes (UTF-8 gives every character one to four bytes),
and then learns longer tokens from the text:

    train:  ids = the text's bytes (0..255)
            repeat: count every adjacent pair of ids; the most frequent pair (a, b) becomes a
                    new token, id 256, 257, ...; replace every (a, b) by it
    encode: the text's bytes, then replay the merges: while some adjacent pair is a merge,
            merge the one learned first (lowest rank), everywhere
    decode: each id stands for a string of bytes; join them and decode UTF-8

GPT-2 first cuts the text into chunks with a regular expression (words with their leading
space, runs of digits, runs of punctuation, runs of whitespace, the endings 's 't 're 've 'm 'll
'd), and merges never cross a chunk: " the" can become one token, "the cat" never does. So
training counts pairs inside each distinct chunk, weighted by how often the chunk occurs.

Ties: when several pairs are equally frequent, the one with the smallest ids wins (compare the
first ids, then the second), so training does not depend on the order of a dictionary.

This module is the reference: every step recounts every pair, which takes minutes on a megabyte
of text. ``bpe_fast.py`` is its twin that updates the counts where a merge changed them, and the
tests prove the two learn the same merges and encode alike.
"""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import regex

# GPT-2's pre-tokenisation pattern (as tiktoken's gpt2 encoding writes it); \p{L} is any letter,
# \p{N} any digit or numeral, of any script: this is why it needs the `regex` package
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

Pair = tuple[int, int]


def split_chunks(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """The text cut into GPT-2's chunks: ``"Hello, world's"`` -> ``["Hello", ",", " world", "'s"]``."""
    return regex.findall(pattern, text)


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter[Pair]:
    """How often each adjacent pair occurs, over ``words`` (a chunk's ids -> how often the chunk occurs)."""
    counts: Counter[Pair] = Counter()
    for ids, n in words.items():
        for pair in pairwise(ids):
            counts[pair] += n
    return counts


def merge(ids: tuple[int, ...] | list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of ``pair`` in ``ids`` by ``new_id``, left to right
    (so (a, a) in a, a, a merges the first two)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def most_frequent(counts: dict[Pair, int]) -> Pair:
    """The pair to merge next: the highest count; among equal counts, the smallest ids."""
    return min(counts, key=lambda pair: (-counts[pair], pair))


def text_chunks(texts: str | list[str], pattern: str = GPT2_PATTERN) -> Counter[str]:
    """How often each chunk occurs in a text, or in several pieces of text (each chunked alone)."""
    pieces = [texts] if isinstance(texts, str) else texts
    return Counter(chunk for piece in pieces for chunk in split_chunks(piece, pattern))


def train_merges(texts: str | list[str], n_merges: int, pattern: str = GPT2_PATTERN) -> list[Pair]:
    """Learn up to ``n_merges`` merges from a text (or pieces of text); merge i makes token 256 + i.

    Stops early when no pair is left (every chunk is one token): the text gives no more.
    """
    words = {tuple(chunk.encode("utf-8")): n for chunk, n in text_chunks(texts, pattern).items()}
    merges: list[Pair] = []
    while len(merges) < n_merges:
        counts = pair_counts(words)
        if not counts:
            break
        pair = most_frequent(counts)
        new_id = 256 + len(merges)
        merges.append(pair)
        words = {tuple(merge(ids, pair, new_id)): n for ids, n in words.items()}
    return merges


def encode_chunk(ids: list[int], merge_ids: dict[Pair, int]) -> list[int]:
    """One chunk's byte ids -> its tokens. ``merge_ids`` maps each merge's pair to the token it
    makes; tokens made later have larger ids, so the smallest id is the merge learned first."""
    while len(ids) >= 2:
        pair = min(pairwise(ids), key=lambda p: merge_ids.get(p, float("inf")))
        if pair not in merge_ids:
            break  # no adjacent pair is a merge: done
        ids = merge(ids, pair, merge_ids[pair])
    return ids
