"""The speed twin of ``bpe.py``: the same merges learned, the same tokens encoded, much faster.

Training. The reference recounts every pair of the text for every merge. Here the counts are
kept up to date instead: the distinct chunks' bytes lie in one linked list (a position knows the
one before and after it in its chunk, and its chunk's count), each pair knows the positions
where it occurs, and a merge touches only those positions. Merging (a, b) at position i, between
h before it and k after it, changes four counts:

    (h, a) and (b, k) lose the chunk's count      (their occurrences are gone)
    (h, ab) and (ab, k) gain it                   (new neighbours)

A heap of (-count, pair) entries gives the most frequent pair (smallest ids on ties, as the
reference); entries whose count has changed since are stale and skipped when they come up. A
chunk of any length costs time in proportion to the merges made inside it, never its length
times the number of merges.

Encoding. The chunks of a text repeat ("the", " and", "\\n"), so each distinct chunk is encoded
once and remembered. A short chunk is encoded by the reference loop; a long one (a line of
10 MB without spaces is one chunk) with a heap of (rank, position) over the same linked list,
which merges pairs in the reference's order: the lowest rank first, leftmost first among equals.
"""

from __future__ import annotations

import heapq
from itertools import pairwise
from collections import defaultdict

from minigpt.tokenizers.bpe import GPT2_PATTERN, Pair, encode_chunk, split_chunks, text_chunks

LONG_CHUNK = 128  # bytes; longer chunks are encoded with the heap (tests set it small)
CACHE_LIMIT = 1 << 18  # distinct chunks remembered; beyond this the cache starts afresh


def train_merges(texts: str | list[str], n_merges: int, pattern: str = GPT2_PATTERN) -> list[Pair]:
    """``bpe.train_merges``'s twin: the same merges, with counts updated where each merge changes them."""
    sym: list[int] = []  # the id at each position (-1: merged into the position before)
    weight: list[int] = []  # how often the chunk holding the position occurs in the text
    nxt: list[int] = []  # the next position in the same chunk, or -1
    prv: list[int] = []  # the previous position in the same chunk, or -1
    for chunk, n in text_chunks(texts, pattern).items():
        ids = chunk.encode("utf-8")
        start, end = len(sym), len(sym) + len(ids)
        sym.extend(ids)
        weight.extend([n] * len(ids))
        nxt.extend(range(start + 1, end + 1))
        nxt[-1] = -1
        prv.extend(range(start - 1, end - 1))
        prv[start] = -1

    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)  # pair -> positions of its first id
    for i, j in enumerate(nxt):
        if j >= 0:
            counts[sym[i], sym[j]] += weight[i]
            where[sym[i], sym[j]].add(i)
    heap = [(-n, pair) for pair, n in counts.items()]
    heapq.heapify(heap)

    changed: set[Pair] = set()  # the pairs whose counts a merge changed: pushed once, after it

    def change(pair: Pair, position: int, delta: int) -> None:
        counts[pair] += delta
        if delta > 0:
            where[pair].add(position)
        else:
            where[pair].discard(position)
        changed.add(pair)

    merges: list[Pair] = []
    while len(merges) < n_merges:
        while heap and counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)  # stale: the pair's count changed after this entry was pushed
        if not heap:
            break  # no pair is left: the text gives no more merges
        pair = heapq.heappop(heap)[1]
        a, b = pair
        new_id = 256 + len(merges)
        merges.append(pair)
        for i in sorted(where.pop(pair)):  # left to right, as the reference's merge
            j = nxt[i]
            if j < 0 or sym[i] != a or sym[j] != b:
                continue  # taken by the merge just before it: (a, a) in a, a, a
            n, h, k = weight[i], prv[i], nxt[j]
            if h >= 0:
                change((sym[h], a), h, -n)
            if k >= 0:
                change((b, sym[k]), j, -n)
            sym[i], sym[j], nxt[i] = new_id, -1, k
            if k >= 0:
                prv[k] = i
                change((new_id, sym[k]), i, n)
            if h >= 0:
                change((sym[h], new_id), h, n)
        counts.pop(pair, None)  # merged everywhere: no (a, b) is left
        where.pop(pair, None)
        changed.discard(pair)
        for p in changed:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                del counts[p], where[p]
        changed.clear()
    return merges


def encode_long_chunk(ids: list[int], merge_ids: dict[Pair, int]) -> list[int]:
    """``bpe.encode_chunk``'s twin for long chunks: each merge costs a heap operation, not a pass."""
    sym = list(ids)
    nxt = list(range(1, len(sym) + 1))
    if sym:
        nxt[-1] = -1
    prv = list(range(-1, len(sym) - 1))
    heap = [(merge_ids[p], i) for i, p in enumerate(pairwise(sym)) if p in merge_ids]
    heapq.heapify(heap)
    while heap:
        new_id, i = heapq.heappop(heap)
        j = nxt[i]
        if j < 0 or sym[i] < 0 or merge_ids.get((sym[i], sym[j])) != new_id:
            continue  # this pair is gone: one of its ids was merged with another neighbour
        k = nxt[j]
        sym[i], sym[j], nxt[i] = new_id, -1, k
        if k >= 0:
            prv[k] = i
            if (new_id, sym[k]) in merge_ids:
                heapq.heappush(heap, (merge_ids[new_id, sym[k]], i))
        h = prv[i]
        if h >= 0 and (sym[h], new_id) in merge_ids:
            heapq.heappush(heap, (merge_ids[sym[h], new_id], h))
    return [s for s in sym if s >= 0]


class ChunkEncoder:
    """Text -> token ids, chunk by chunk, each distinct chunk encoded once.

    ``byte_ids[b]`` is the token of byte b (b itself for a BPE trained here; GPT-2 orders its
    bytes otherwise), ``merge_ids`` maps each merge's pair to the token it makes.
    """

    def __init__(self, byte_ids: list[int], merge_ids: dict[Pair, int], pattern: str = GPT2_PATTERN) -> None:
        self.byte_ids, self.merge_ids, self.pattern = byte_ids, merge_ids, pattern
        self.cache: dict[str, list[int]] = {}

    def encode_chunk(self, chunk: str) -> list[int]:
        ids = [self.byte_ids[b] for b in chunk.encode("utf-8")]
        if len(ids) > LONG_CHUNK:
            return encode_long_chunk(ids, self.merge_ids)
        return encode_chunk(ids, self.merge_ids)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        cache = self.cache
        for chunk in split_chunks(text, self.pattern):
            ids = cache.get(chunk)
            if ids is None:
                ids = self.encode_chunk(chunk)
                if len(chunk) <= LONG_CHUNK:  # long chunks rarely repeat: do not keep them
                    if len(cache) >= CACHE_LIMIT:
                        cache.clear()
                    cache[chunk] = ids
            out.extend(ids)
        return out
