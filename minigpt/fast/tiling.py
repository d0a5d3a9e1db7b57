"""Tiles: running a chain of elementwise passes over a cache-sized piece at a time.

On a CPU, an elementwise pass over an array larger than the L2 cache runs at the speed of
the L3 cache or memory. A chain of such passes (GELU, layer norm, softmax, AdamW) is much
faster done tile by tile, each tile staying in L2 for the whole chain. On a GPU tiling
only adds kernel launches, so there each "tile" is the whole array. What it buys is measured per
twin by benchmarks/bench_fast_ops.py (docs/performance.md).
"""

from __future__ import annotations

import contextlib
from types import ModuleType
from typing import Any

from minigpt import backend

# Elements per tile: 256 KiB of float32 (tests patch it small to run many tiles). A chain's tiles
# then fit in a 2 MiB L2: layer norm's and attention's two or three arrays, AdamW's five (p, g, m,
# v and a scratch: 1.25 MiB; 2.5 MiB in float64, beyond it). Fewer, larger tiles cost fewer NumPy
# calls until a tile's chain no longer fits in L2; the size was chosen by timing whole training
# steps over tile sizes from 2^15 to 2^18 elements. The tile size changes
# the last bits of some results (a row sum's rounding depends on where its row falls in a tile's
# matrix-vector product), never more than rounding: the tests hold every twin to the reference.
TILE = 1 << 16


def tiles(xp: ModuleType, n: int, unit: int = 1) -> list[slice]:
    """Slices covering range(n) whose length times ``unit`` elements is about TILE (one slice on GPU)."""
    if xp is not backend.numpy or n * unit <= TILE:
        return [slice(0, n)]
    step = max(1, TILE // max(unit, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def tile_rows(xp: ModuleType, n: int, unit: int = 1) -> int:
    """How many rows (of ``unit`` elements) the largest of :func:`tiles` holds: a scratch size."""
    return max(sl.stop - sl.start for sl in tiles(xp, n, unit)) if n else 0


def overflow_ok(xp: ModuleType) -> Any:
    """A context in which a float overflow to inf (and what follows from it: inf - inf = NaN in
    a sum) is expected and handled: NumPy stays quiet (CuPy never warns)."""
    return backend.numpy.errstate(over="ignore", invalid="ignore") if xp is backend.numpy else contextlib.nullcontext()
