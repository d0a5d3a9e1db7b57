"""Row sums, row means and row maxima, each faster than NumPy's reduction on short rows.

NumPy's sum over the last axis of a (N, C) array with C of a few dozen to a few hundred runs a
loop per row; a matrix-vector product with a vector of ones (BLAS) sums every row at once,
several times faster. Each function names the plain reduction it equals.

The row sum wins at every row length the GPT uses. The max tree (elementwise maxima of halves)
was faster than NumPy's max for the even rows of attention's scores where it was tuned; with
NumPy 2's vectorised max on an AMD EPYC it is about even there, and it loses on an odd row (the
logits' 65 columns), where the odd column costs a pass of its own: odd rows take NumPy's max.
Max is exact either way, so the choice changes no number, only time.
"""

from __future__ import annotations

from typing import Any

from minigpt import backend
from minigpt.ops import as_rows

MAX_TREE_MIN_WIDTH = 16  # narrower rows: x.max is as fast (tests patch it to run the tree)
USE_VECDOT = True  # row_dot through NumPy's vecdot where it exists (tests turn it off to run the fallback)


def row_sum(x: Any) -> Any:
    """x.sum(axis=-1, keepdims=True), as one matrix-vector product when x is contiguous."""
    xp = backend.get_array_module(x)
    if xp is not backend.numpy or not x.flags.c_contiguous or x.ndim < 2:
        return x.sum(axis=-1, keepdims=True)
    return (as_rows(x) @ xp.ones(x.shape[-1], dtype=x.dtype)).reshape(x.shape[:-1] + (1,))


def row_mean(x: Any, inv_n: Any) -> Any:
    """x.mean(axis=-1, keepdims=True) of x (N, C), given inv_n = full(C, 1/C): one
    matrix-vector product."""
    return (x @ inv_n)[:, None]


def row_dot(a: Any, b: Any, scratch: Any) -> Any:
    """(a * b).sum(axis=-1, keepdims=True) of a and b (N, C): NumPy's vecdot where it has it
    (NumPy 2), one pass that writes no product array; else the product, into ``scratch`` (N, C),
    then its row sum."""
    xp = backend.get_array_module(a)
    if USE_VECDOT and hasattr(xp, "vecdot") and xp is backend.numpy:
        return xp.vecdot(a, b)[:, None]
    return row_sum(xp.multiply(a, b, out=scratch))


def column_sum(x: Any) -> Any:
    """x.sum(axis=0) of x (N, C) -> (C,), as ones(N) @ x."""
    xp = backend.get_array_module(x)
    return xp.ones(x.shape[0], dtype=x.dtype) @ x


def row_max(x: Any) -> Any:
    """x.max(axis=-1, keepdims=True); for even rows of at least MAX_TREE_MIN_WIDTH, computed as
    a tree of elementwise maxima of halves: log2(n) vectorised passes over shrinking halves, which
    beat a reduction that loops row by row. NaN and -inf propagate as in max."""
    xp = backend.get_array_module(x)
    if xp is not backend.numpy or x.shape[-1] < MAX_TREE_MIN_WIDTH or x.shape[-1] % 2:  # odd: NumPy's max
        return x.max(axis=-1, keepdims=True)
    m = x
    while m.shape[-1] > 1:
        n, half = m.shape[-1], m.shape[-1] // 2
        top = xp.maximum(m[..., :half], m[..., half:2 * half])
        if n % 2:  # the odd one out joins the first column
            xp.maximum(top[..., :1], m[..., -1:], out=top[..., :1])
        m = top
    return m
