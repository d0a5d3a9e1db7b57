"""Hypothesis strategies: small random shapes and float64 values away from kinks.

Values come from a hypothesis-chosen seed (standard normal, so ties and zeros have
probability ~0), scaled by a hypothesis-chosen factor; hypothesis explores shapes,
scales and seeds, and shrinks failures to small shapes.
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


@st.composite
def broadcastable_pair(draw):
    """Two shapes that broadcast together: some axes of one are dropped or set to 1."""
    shape = draw(shapes(min_dims=1, max_dims=3))
    other = list(shape)
    for i in range(len(other)):
        if draw(st.booleans()):
            other[i] = 1
    drop = draw(st.integers(0, len(other) - 1))
    other = tuple(other[drop:])
    if draw(st.booleans()):
        return shape, other
    return other, shape
