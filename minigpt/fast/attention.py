"""Fast twins of attention: ``functional.ScaledDotProductAttention`` tile by tile over the batch,
and the fused multi-head attention straight from c_attn's packed output.

Legend: B batch, nh heads, T query positions, S key positions (T = S in self-attention),
hs head size, C = nh * hs.

What the reference does in whole arrays (scores -> mask -> softmax -> dropout -> @ v, and back),
these do one batch tile at a time, so that the (tile, nh, T, S) scores stay in cache between
the matrix product that makes them and the one that uses them, with the softmax twins of
fast/functional.py (no row max, BLAS row sums) and preallocated buffers.
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt import functional as reference
from minigpt.fast import tiling
from minigpt.fast.functional import softmax_backward, softmax_forward
from minigpt.tensor import Function, Tensor

# When q @ kᵀ runs on a contiguous copy of kᵀ (see transposed_buffer). Tests patch them both ways.
KT_COPY_MIN_T, KT_COPY_MAX_S, KT_COPY_MAX_HS = 32, 128, 48
_MASKS: dict[tuple, Any] = {}


def additive_causal_mask(T: int, S: int, xp: Any, dtype: Any) -> Any:
    """(T, S): 0 where query i may look at key j, -inf where it may not: adding it to the scores
    does what the reference's where(causal_mask, scores, -inf) does, in place. Cached."""
    key = (T, S, xp.__name__, str(dtype))
    if key not in _MASKS:
        _MASKS[key] = xp.where(reference.causal_mask(T, S, xp), 0.0, -math.inf).astype(dtype)
    return _MASKS[key]


def batch_tiles(xp: Any, att_shape: tuple[int, ...]) -> list[Any]:
    """Tiles over the first (batch) axis of att, each about TILE elements."""
    if len(att_shape) < 3:
        return [Ellipsis]
    return tiling.tiles(xp, att_shape[0], math.prod(att_shape[1:]))


def transposed_buffer(q: Any, k: Any, tile: Any) -> Any:
    """Room for one batch tile of k (.., S, hs) with its last two axes swapped, (.., hs, S), when
    q @ kᵀ runs faster on a contiguous copy of kᵀ than on a transposed view; else None.

    With NumPy's OpenBLAS (q @ kᵀ, batched), for narrow heads, many query rows and few keys (the
    CPU recipes: hs 32, T = S = 64) the product on a transposed view runs slower than on a
    contiguous copy, by more than the copy costs; the thresholds below were timed on x86 CPUs.
    For wider heads or longer rows the copy costs more than it saves, for a single query row
    (generation with a cache) it is pure cost."""
    xp = backend.get_array_module(k)
    T, S, hs = q.shape[-2], k.shape[-2], k.shape[-1]
    if xp is not backend.numpy or not (T >= KT_COPY_MIN_T and S <= KT_COPY_MAX_S and hs <= KT_COPY_MAX_HS):
        return None
    shape = k[tile].shape
    return xp.empty(shape[:-2] + (hs, S), dtype=k.dtype)


def transposed(k: Any, buf: Any, scale: float | None = None) -> Any:
    """kᵀ over the last two axes: copied into (the front of) ``buf``, contiguous, when a buffer
    is given (see transposed_buffer), else a transposed view. With ``scale``, the copy is
    scale · kᵀ (the copy's pass does the multiply); the view is never scaled: a caller without
    a buffer scales the product instead."""
    xp = backend.get_array_module(k)
    if buf is None:
        return xp.swapaxes(k, -1, -2)
    kt = buf[: k.shape[0]] if k.ndim > 2 else buf
    if scale is None:
        xp.copyto(kt, xp.swapaxes(k, -1, -2))
    else:
        xp.multiply(xp.swapaxes(k, -1, -2), scale, out=kt)
    return kt


# shift_by_diagonal never shifts a row up by more than this (see its docstring)
DIAGONAL_SHIFT_MAX = 64.0


def shift_by_diagonal(s: Any) -> None:
    """s (.., T, S) with T <= S, causally masked: subtract from each row i its diagonal score
    s[i, i], which the causal mask always leaves visible, or 64 where that is below -64.
    softmax is unchanged by a per-row shift, and after it the row holds a 0, so its sum of exp
    is at least 1: the fast softmax's unshifted try (fast/functional.py) then holds for it, where
    row 0 (one visible score, below 0 about half the time) and a few early rows failed it in most
    tiles. Only rows with a score more than ~87 (float32) above the diagonal, a diagonal below
    -64, or NaN are still redone there. The floor keeps the shift harmless: a finite score moved
    up by at most 64 cannot overflow, and a diagonal of -inf (an overflowed q · k) does not turn
    the row's other scores into inf and its masked ones into NaN. (A diagonal of +inf or NaN
    makes the row NaN, as in the reference, whose softmax sees it too.)"""
    xp = backend.get_array_module(s)
    diag = s.diagonal(axis1=-2, axis2=-1).copy()  # (.., T)
    xp.maximum(diag, -DIAGONAL_SHIFT_MAX, out=diag)
    s -= diag[..., None]


def attention_forward(q: Any, k: Any, v: Any, is_causal: bool, dropout_p: float, scale: float,
                      out: Any = None) -> tuple:
    """The reference's forward, per batch tile: returns y (B, nh, T, hs), att (B, nh, T, S) and
    the dropout mask (or None), which backward needs. ``out``: an array (a view allowed) of y's
    shape to write y into, instead of a new one."""
    xp = backend.get_array_module(q)
    T, S = q.shape[-2], k.shape[-2]
    att = xp.empty(q.shape[:-2] + (T, S), dtype=q.dtype)  # (B, nh, T, S)
    y = xp.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype) if out is None else out  # (B, nh, T, hs)
    drop = reference.dropout_mask(att, dropout_p) if dropout_p > 0.0 else None
    mask = additive_causal_mask(T, S, xp, att.dtype) if is_causal else None
    tiles = batch_tiles(xp, att.shape)
    scores = xp.empty_like(att[tiles[0]])  # one tile's scores; softmax writes att
    kt_buf = transposed_buffer(q, k, tiles[0])
    for b in tiles:
        a = att[b]
        s = scores[: a.shape[0]]
        kt = transposed(k[b], kt_buf, scale)  # (.., S, hs) -> (.., hs, S), times scale when copied
        xp.matmul(q[b], kt, out=s)  # (.., T, hs) @ (.., hs, S) -> (.., T, S)
        if kt_buf is None:
            s *= scale
        if mask is not None:
            s += mask  # -inf above the diagonal
            if T <= S:
                shift_by_diagonal(s)
        softmax_forward(s, axis=-1, out=a)  # masked entries become exactly 0
        if drop is None:
            xp.matmul(a, v[b], out=y[b])  # (.., T, S) @ (.., S, hs) -> (.., T, hs)
        else:
            xp.matmul(a * drop[b], v[b], out=y[b])
    return y, att, drop


def attention_backward(dy: Any, q: Any, k: Any, v: Any, att: Any, drop: Any, scale: float,
                       out: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any, Any]:
    """The reference's backward, per batch tile. ``out``: three arrays (views allowed) to write
    dq, dk, dv into, instead of new ones."""
    xp = backend.get_array_module(dy)
    dq, dk, dv = out if out is not None else (xp.empty(t.shape, dtype=dy.dtype) for t in (q, k, v))
    tiles = batch_tiles(xp, att.shape)
    datt_buf, yd_buf = (xp.empty_like(att[tiles[0]]) for _ in range(2))  # one tile each
    vt_buf = transposed_buffer(dy, v, tiles[0])
    for b in tiles:
        a = att[b]
        datt, yd = datt_buf[: a.shape[0]], yd_buf[: a.shape[0]]
        a_d = a if drop is None else a * drop[b]
        # forward: y = att_d @ v
        xp.matmul(xp.swapaxes(a_d, -1, -2), dy[b], out=dv[b])  # (.., S, T) @ (.., T, hs) -> (.., S, hs)
        vt = transposed(v[b], vt_buf)  # (.., S, hs) -> (.., hs, S)
        xp.matmul(dy[b], vt, out=datt)  # (.., T, hs) @ (.., hs, S) -> (.., T, S)
        # forward: att_d = att * drop
        if drop is not None:
            datt *= drop[b]
        # forward: att = softmax(scale * q @ kᵀ + mask)  (masked entries: att = 0, so ds = 0 there)
        ds = softmax_backward(a, datt, axis=-1, inplace=True, scratch=yd)
        ds *= scale
        xp.matmul(ds, k[b], out=dq[b])  # (.., T, S) @ (.., S, hs) -> (.., T, hs)
        xp.matmul(xp.swapaxes(ds, -1, -2), q[b], out=dk[b])  # (.., S, T) @ (.., T, hs) -> (.., S, hs)
    return dq, dk, dv


class ScaledDotProductAttention(reference.ScaledDotProductAttention):
    """Twin of ``functional.ScaledDotProductAttention``: the same forward and backward, run per
    batch tile (attention_forward / attention_backward above). Saves q, k, v, att (B, nh, T, S)
    and, with dropout, its mask.
    When the batch axes of q, k and v differ (broadcasting), the reference runs instead."""

    def forward(self, q: Any, k: Any, v: Any, is_causal: bool = True, dropout_p: float = 0.0,
                scale: float | None = None) -> Any:
        self.tiled = q.shape[:-2] == k.shape[:-2] == v.shape[:-2]
        if not self.tiled:
            return super().forward(q, k, v, is_causal, dropout_p, scale)
        self.scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        y, att, drop = attention_forward(q, k, v, is_causal, dropout_p, self.scale)
        self.saved = (q, k, v, att, drop)
        return y

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        if not self.tiled:
            return super().backward(dy)
        q, k, v, att, drop = self.saved
        return attention_backward(dy, q, k, v, att, drop, self.scale)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """Twin of ``functional.scaled_dot_product_attention``."""
    reference.check_p(dropout_p)
    return ScaledDotProductAttention.apply(q, k, v, is_causal=is_causal, dropout_p=dropout_p, scale=scale)


class CausalSelfAttentionQKV(Function):
    """Multi-head causal attention straight from the c_attn output qkv (B, T, 3C) to the
    merged heads y (B, T, C). Its reference is what the GPT's CausalSelfAttention does with the
    reference ops (minigpt/nn/gpt.py):

        q, k, v = split qkv into heads                                    # 3 × (B, nh, T, hs)
        y = scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)

    Fused, the heads are strided views of qkv (no copies), att @ v writes each head's y straight
    into its columns of the merged (B, T, C) output (no transposed copy), and backward writes
    dq, dk, dv straight into the one d(qkv) buffer, instead of three zero-filled slice gradients
    summed together. Saves qkv and att (B, nh, T, T) (plus the dropout mask).
    """

    def forward(self, qkv: Any, n_head: int, dropout_p: float = 0.0) -> Any:
        B, T, C3 = qkv.shape
        C = C3 // 3
        q, k, v = reference.split_heads(qkv, n_head)  # 3 × (B, nh, T, hs), views
        self.scale = 1.0 / math.sqrt(C // n_head)
        merged = backend.get_array_module(qkv).empty((B, T, n_head, C // n_head), dtype=qkv.dtype)
        # y (B, nh, T, hs) is written as a view of merged heads (B, T, nh, hs)
        _, att, drop = attention_forward(q, k, v, True, dropout_p, self.scale, out=merged.transpose(0, 2, 1, 3))
        self.saved = (qkv, att, drop)
        self.n_head = n_head
        return merged.reshape(B, T, C)  # (B, T, nh, hs) -> (B, T, C), a view

    def backward(self, dy: Any) -> Any:
        qkv, att, drop = self.saved
        xp = backend.get_array_module(dy)
        B, T, C3 = qkv.shape
        nh, hs = self.n_head, C3 // 3 // self.n_head
        q, k, v = reference.split_heads(qkv, nh)
        # forward: y = merged heads  =>  dy viewed per head
        dy_heads = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        dqkv = xp.empty((B, T, C3), dtype=qkv.dtype)
        dq, dk, dv = reference.split_heads(dqkv, nh)  # views: dq, dk, dv are written straight in
        attention_backward(dy_heads, q, k, v, att, drop, self.scale, out=(dq, dk, dv))
        return dqkv


def causal_self_attention(qkv: Tensor, n_head: int, dropout_p: float = 0.0) -> Tensor:
    """Causal multi-head attention from packed qkv (B, T, 3C) to merged heads (B, T, C)."""
    reference.check_p(dropout_p)
    return CausalSelfAttentionQKV.apply(qkv, n_head=n_head, dropout_p=dropout_p)
