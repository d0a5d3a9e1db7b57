"""Causal scaled-dot-product attention, forward and hand-written backward.

Legend: B batch, nh heads, T query positions, S key positions (T = S in self-attention),
hs head size.

``attention_forward`` / ``attention_backward`` hold the math on arrays; the public op
``scaled_dot_product_attention`` (re-exported by minigpt.functional) and the fused
``CausalSelfAttentionQKV`` (minigpt/fused.py) both call them. The work runs tile by tile over
the batch axis so that scores, softmax and products stay in cache.
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt.functional import _check_p, _dropout_mask, _softmax, _softmax_backward
from minigpt.tensor import Function, Tensor

_MASKS: dict[tuple, Any] = {}


def causal_mask(T_q: int, T_k: int, xp: Any) -> Any:
    """(T_q, T_k) bool, True where query i may look at key j (j <= i), as torch's is_causal."""
    return xp.tril(xp.ones((T_q, T_k), dtype=bool))


def _additive_causal_mask(T_q: int, T_k: int, xp: Any, dtype: Any) -> Any:
    """(T_q, T_k): 0 where query i may look at key j, -inf where it may not (cached)."""
    key = (T_q, T_k, xp.__name__, str(dtype))
    if key not in _MASKS:
        _MASKS[key] = xp.where(causal_mask(T_q, T_k, xp), 0.0, -math.inf).astype(dtype)
    return _MASKS[key]


def _batch_tiles(xp: Any, att_shape: tuple[int, ...]) -> list[Any]:
    """Tiles over the first (batch) axis of att, each about TILE elements, so that the chain
    matmul -> scale -> mask -> softmax -> matmul runs on data that stays in cache."""
    if len(att_shape) < 3:
        return [Ellipsis]
    unit = 1
    for n in att_shape[1:]:
        unit *= n
    return backend.tiles(xp, att_shape[0], unit)


def _transposed_buffer(q: Any, k: Any, tile: Any) -> Any:
    """Room for one batch tile of k (.., S, hs) with its last two axes swapped, (.., hs, S), when
    q @ kᵀ runs faster on a contiguous copy of kᵀ than on a transposed view; else None.

    Measured with NumPy's OpenBLAS on a 2-core x86 machine (q @ kᵀ, batched): for heads of up
    to 48 channels, 32 or more query rows and at most 128 keys (the CPU preset: hs 32, T = S = 64)
    the product on a transposed view runs 1.4-2x slower than on a contiguous copy, and the copy
    costs less than the difference. For wider heads or longer rows the copy costs more than it
    saves, for a single query row (generation with a cache) it is pure cost, and on a GPU
    cuBLAS takes transposed operands at full speed: there the view is used as it is."""
    xp = backend.get_array_module(k)
    T, S, hs = q.shape[-2], k.shape[-2], k.shape[-1]
    if xp is not backend.numpy or not (T >= 32 and S <= 128 and hs <= 48):
        return None
    shape = k[tile].shape
    return xp.empty(shape[:-2] + (hs, S), dtype=k.dtype)


def _transposed(k: Any, buf: Any) -> Any:
    """kᵀ over the last two axes: copied into (the front of) ``buf``, contiguous, when a buffer
    is given (see _transposed_buffer), else a transposed view."""
    xp = backend.get_array_module(k)
    if buf is None:
        return xp.swapaxes(k, -1, -2)
    kt = buf[: k.shape[0]] if k.ndim > 2 else buf
    xp.copyto(kt, xp.swapaxes(k, -1, -2))
    return kt


def attention_forward(q: Any, k: Any, v: Any, is_causal: bool, dropout_p: float, scale: float) -> tuple:
    """The math of attention on arrays: returns y (B, nh, T, hs), att (B, nh, T, S) and the
    dropout mask (or None), which backward needs. See ScaledDotProductAttention."""
    xp = backend.get_array_module(q)
    T, S = q.shape[-2], k.shape[-2]
    att = xp.empty(q.shape[:-2] + (T, S), dtype=q.dtype)  # (B, nh, T, S)
    y = xp.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)  # (B, nh, T, hs)
    drop = _dropout_mask(att, dropout_p) if dropout_p > 0.0 else None
    mask = _additive_causal_mask(T, S, xp, att.dtype) if is_causal else None
    tiles = _batch_tiles(xp, att.shape)
    scores = xp.empty_like(att[tiles[0]])  # one tile's scores; softmax writes att
    kt_buf = _transposed_buffer(q, k, tiles[0])
    for b in tiles:
        a = att[b]
        s = scores[: a.shape[0]]
        kt = _transposed(k[b], kt_buf)  # (.., S, hs) -> (.., hs, S)
        xp.matmul(q[b], kt, out=s)  # (.., T, hs) @ (.., hs, S) -> (.., T, S)
        s *= scale
        if mask is not None:
            s += mask  # -inf above the diagonal
        _softmax(s, axis=-1, out=a)  # masked entries become exactly 0
        if drop is None:
            xp.matmul(a, v[b], out=y[b])  # (.., T, S) @ (.., S, hs) -> (.., T, hs)
        else:
            xp.matmul(a * drop[b], v[b], out=y[b])
    return y, att, drop


def attention_backward(dy: Any, q: Any, k: Any, v: Any, att: Any, drop: Any, scale: float,
                       out: tuple[Any, Any, Any] | None = None) -> tuple[Any, Any, Any]:
    """dq, dk, dv from dy (B, nh, T, hs), tile by tile over the batch. See ScaledDotProductAttention.
    ``out``: three arrays (views allowed) to write dq, dk, dv into, instead of new ones."""
    xp = backend.get_array_module(dy)
    dq, dk, dv = out if out is not None else (xp.empty(t.shape, dtype=dy.dtype) for t in (q, k, v))
    tiles = _batch_tiles(xp, att.shape)
    datt_buf, yd_buf = (xp.empty_like(att[tiles[0]]) for _ in range(2))  # one tile each
    vt_buf = _transposed_buffer(dy, v, tiles[0])
    for b in tiles:
        a = att[b]
        datt, yd = datt_buf[: a.shape[0]], yd_buf[: a.shape[0]]
        a_d = a if drop is None else a * drop[b]
        # forward: y = att_d @ v
        xp.matmul(xp.swapaxes(a_d, -1, -2), dy[b], out=dv[b])  # (.., S, T) @ (.., T, hs) -> (.., S, hs)
        vt = _transposed(v[b], vt_buf)  # (.., S, hs) -> (.., hs, S)
        xp.matmul(dy[b], vt, out=datt)  # (.., T, hs) @ (.., hs, S) -> (.., T, S)
        # forward: att_d = att * drop
        if drop is not None:
            datt *= drop[b]
        # forward: att = softmax(scale * q @ kᵀ + mask)  (masked entries: att = 0, so ds = 0 there)
        ds = _softmax_backward(a, datt, axis=-1, inplace=True, scratch=yd)
        ds *= scale
        xp.matmul(ds, k[b], out=dq[b])  # (.., T, S) @ (.., S, hs) -> (.., T, hs)
        xp.matmul(xp.swapaxes(ds, -1, -2), q[b], out=dk[b])  # (.., S, T) @ (.., T, hs) -> (.., S, hs)
    return dq, dk, dv


class ScaledDotProductAttention(Function):
    """y = softmax(q kᵀ * s + mask) v, s = 1/sqrt(hs) by default; -inf above the diagonal if causal.

    q (B, nh, T, hs), k and v (B, nh, S, hs) -> y (B, nh, T, hs). Forward:
        att = q @ kᵀ * s                     (B, nh, T, S)
        att = softmax(att + mask)            mask: 0 on and below the diagonal, -inf above,
                                             so masked entries become exactly 0
        att_d = att * drop                   (drop: inverted-dropout mask, when dropout_p > 0)
        y = att_d @ v
    Backward, in reverse:
        dv = att_dᵀ @ dy,   datt_d = dy @ vᵀ
        datt = datt_d * drop
        ds = att * (datt - sum(att * datt)) * s      (softmax backward; masked entries stay 0)
        dq = ds @ k,   dk = dsᵀ @ q
    Saves q, k, v, att (B, nh, T, S) and, with dropout, its mask (B, nh, T, S).
    """

    def forward(self, q: Any, k: Any, v: Any, is_causal: bool = True, dropout_p: float = 0.0,
                scale: float | None = None) -> Any:
        self.scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        y, att, drop = attention_forward(q, k, v, is_causal, dropout_p, self.scale)
        self.saved = (q, k, v, att, drop)
        return y

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        q, k, v, att, drop = self.saved
        return attention_backward(dy, q, k, v, att, drop, self.scale)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ/√hs, causal mask) v: q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs)."""
    _check_p(dropout_p)
    return ScaledDotProductAttention.apply(q, k, v, is_causal=is_causal, dropout_p=dropout_p, scale=scale)
