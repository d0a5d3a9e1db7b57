"""Hypothesis strategies: small random shapes and float64 values away from kinks.

Values come from a hypothesis-chosen seed (standard normal, so ties and zeros have
probability ~0), scaled by a hypothesis-chosen factor; hypothesis explores shapes,
scales and seeds, and shrinks failures to small shapes. The shape strategies reach the edges:
broadcasting on both sides at once, every numpy.matmul case (vector @ vector included), attention
with T != S, hs = 1 and broadcast k/v batch axes, and boolean-mask indexes.
"""

import numpy as np
from hypothesis import strategies as st

dims = st.integers(min_value=1, max_value=4)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
scales = st.sampled_from([0.1, 1.0, 3.0])


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=4):
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


def rng_from(seed):
    return np.random.default_rng(seed)


@st.composite
def arrays(draw, shape=None, positive=False, away_from_zero=False):
    """A float64 array of ``shape`` (a tuple, a strategy, or None for any) with random normal values."""
    if shape is None:
        shape = shapes()
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    rng = rng_from(draw(seeds))
    x = rng.standard_normal(shape) * draw(scales)
    if positive:
        x = np.abs(x) + 0.5
    elif away_from_zero:
        x = np.sign(x + 1e-12) * (np.abs(x) + 0.5)
    return x


def array_from(shape, seed, scale=1.0, away_from_zero=False):
    """The array ``arrays`` would give for a shape and seed that a test drew itself (or an @example names)."""
    x = rng_from(seed).standard_normal(shape) * scale
    if away_from_zero:
        x = np.sign(x + 1e-12) * (np.abs(x) + 0.5)
    return x


@st.composite
def broadcastable_shapes(draw, min_dims=1, max_dims=3, max_side=4, long_side=6):
    """Two shapes that broadcast together, on both sides at once.

    The broadcast result has ``min_dims..max_dims`` axes, one of them up to ``long_side`` long.
    On each axis either side, or neither, may hold a 1 where the other holds the full size, and
    each side may drop leading axes: (3, 1) with (1, 4), (2, 1, 3) with (4, 1), (3,) with (2, 3).
    """
    ndim = draw(st.sampled_from(range(max_dims, min_dims - 1, -1)))  # most axes first: more cases
    full = [draw(st.integers(2, max_side)) for _ in range(ndim)]
    if full:
        full[draw(st.integers(0, len(full) - 1))] = draw(st.integers(2, long_side))
    a, b = [], []
    for n in full:
        ones = draw(st.sampled_from(["a", "b", "neither", "both"]))  # which side holds a 1 on this axis
        a.append(1 if ones in ("a", "both") else n)
        b.append(1 if ones in ("b", "both") else n)
    shorter = draw(st.sampled_from(["neither", "a", "b"]))  # dropping on both sides adds no case
    drop = draw(st.integers(1, len(full) - 1)) if shorter != "neither" and len(full) > 1 else 0
    if shorter == "a":
        return tuple(a[drop:]), tuple(b)
    return tuple(a), tuple(b[drop:])


def broadcastable_pair():
    """Two shapes of 1 to 3 axes that broadcast together (see ``broadcastable_shapes``)."""
    return broadcastable_shapes()


@st.composite
def matmul_shapes(draw):
    """Shapes (a, b) that numpy.matmul accepts, in each of its cases:
    (k,) @ (k,) -> ();  (..., n, k) @ (k,) -> (..., n);  (k,) @ (..., k, m) -> (..., m);
    (..., n, k) @ (..., k, m) -> (..., n, m) with the batch axes broadcast on both sides,
    e.g. (2, 1, 3, 4) @ (5, 4, 2) -> (2, 5, 3, 2)."""
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    batch_a, batch_b = draw(broadcastable_shapes(min_dims=0, max_dims=2, max_side=3, long_side=5))
    kind = draw(st.sampled_from(["vec@vec", "mat@vec", "vec@mat", "mat@mat"]))
    if kind == "vec@vec":
        return (k,), (k,)
    if kind == "mat@vec":
        return batch_a + (n, k), (k,)
    if kind == "vec@mat":
        return (k,), batch_b + (k, m)
    return batch_a + (n, k), batch_b + (k, m)


@st.composite
def attention_shapes(draw):
    """(q, k, v) shapes for scaled_dot_product_attention: q (B, nh, T, hs); k and v (*, S, hs)
    with T and S drawn apart (T != S, T or S = 1) and hs = 1 allowed, and the batch axes of k
    and v each either q's (B, nh), (1, nh), (B, 1) or (nh,): they broadcast against q's."""
    B, nh = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    T, S, hs = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    kv_batch = st.sampled_from([(B, nh), (1, nh), (B, 1), (nh,)])
    return (B, nh, T, hs), draw(kv_batch) + (S, hs), draw(kv_batch) + (S, hs)


@st.composite
def boolean_indexes(draw, shape):
    """A boolean-mask index into an array of ``shape`` (at least 2 axes): a mask of the whole
    shape, of the leading axes, or of one later axis after a slice; all-False and all-True masks
    can come out."""
    rng = rng_from(draw(seeds))
    p = draw(st.sampled_from([0.0, 0.5, 1.0]))  # the share of True
    kind = draw(st.sampled_from(["whole", "leading", "after_slice"]))
    if kind == "whole":
        return rng.random(shape) < p
    if kind == "leading":
        return rng.random(shape[: draw(st.integers(1, len(shape) - 1))]) < p
    axis = draw(st.integers(1, len(shape) - 1))
    return (slice(None),) * axis + (rng.random(shape[axis]) < p,)
