"""The neural-network ops, each a forward with a backward written by hand from the math.

Legend: B batch, T time (sequence), C channels, V vocab, nh heads, hs head size,
N rows (any leading axes flattened), "*" any leading axes.

Every op reads its array module from its inputs (``xp``), so one code path runs on
NumPy and CuPy, and keeps its inputs' float dtype (float32 stays float32: constants are
Python numbers, which NumPy and CuPy do not let promote an array).

Each docstring states the forward, the gradient and what is saved for backward.
Each backward mirrors its forward in reverse, with the forward line it inverts above it.
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt.tensor import Function, Tensor

__all__ = ["embedding", "linear", "softmax", "log_softmax", "cross_entropy", "layer_norm",
           "gelu", "dropout", "scaled_dot_product_attention"]


def _data(x: Any) -> Any:
    return x.data if isinstance(x, Tensor) else x


# ----------------------------------------------------------------------------- embedding
_ONE_HOT_LIMIT = 1 << 22  # up to V * N = 4M, a one-hot matmul beats add.at's scatter by far
class Embedding(Function):
    """out[*, :] = weight[idx[*], :]: row lookup.

    Each output row is a copy of one weight row, so weight row v receives the sum of
    the output gradients of every position whose index is v:
        dweight[v] = sum_{n : idx[n] = v} dout[n]          (a scatter-add)
    idx gets no gradient. Saves idx (the int array, *).
    """

    def forward(self, idx: Any, weight: Any) -> Any:
        xp = backend.get_array_module(weight)
        idx = xp.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"embedding indices must be integers, not {idx.dtype}")
        V = weight.shape[0]
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= V):
            raise IndexError(f"embedding index out of range: indices must lie in [0, {V})")
        self.saved, self.weight_shape, self.dtype = idx, weight.shape, weight.dtype
        return weight[idx]  # (*) -> (*, C)

    def backward(self, dout: Any) -> tuple[None, Any]:
        idx = self.saved
        xp = backend.get_array_module(dout)
        V, C = self.weight_shape
        # forward: out[n] = weight[idx[n]]  =>  dweight[idx[n]] += dout[n]
        flat, rows = idx.reshape(-1), dout.reshape(-1, C)  # (N,), (N, C)
        if V * flat.size <= _ONE_HOT_LIMIT:
            # the scatter-add as one matmul: dweight = onehot(idx)ᵀ @ dout, (V, N) @ (N, C) -> (V, C)
            one_hot_t = (xp.arange(V)[:, None] == flat[None, :]).astype(self.dtype)  # (V, N)
            return None, one_hot_t @ rows
        dweight = xp.zeros((V, C), dtype=self.dtype)
        xp.add.at(dweight, flat, rows)
        return None, dweight


def embedding(idx: Any, weight: Tensor) -> Tensor:
    """Look up rows of ``weight`` (V, C) at integer ``idx`` (*): returns (*, C)."""
    return Embedding.apply(_data(idx), weight)


def _row_mean(x: Any, inv_n: Any) -> Any:
    """Mean over the last axis of x (N, C), kept as (N, 1): one matrix-vector product with a
    vector of 1/C (BLAS), several times faster than x.mean(axis=-1) for short rows."""
    return (x @ inv_n)[:, None]


def _column_sum(x: Any) -> Any:
    """Sum over the rows of x (N, C) -> (C,), as ones(N) @ x (BLAS)."""
    xp = backend.get_array_module(x)
    return xp.ones(x.shape[0], dtype=x.dtype) @ x


# ----------------------------------------------------------------------------- linear
class Linear(Function):
    """y = x @ Wᵀ + b, over the last axis of x.   x (*, in), W (out, in), b (out,) -> y (*, out).

    With rows flattened to N = prod(*):  y[n, o] = sum_i x[n, i] W[o, i] + b[o], so
        dx = dy @ W        (N, out) @ (out, in) -> (N, in)
        dW = dyᵀ @ x       (out, N) @ (N, in)   -> (out, in)
        db = sum_n dy[n]                        -> (out,)
    Saves x and W (references, no copies).
    """

    def forward(self, x: Any, weight: Any, bias: Any = None) -> Any:
        self.saved = (x, weight)
        out_features, in_features = weight.shape
        x2 = x.reshape(-1, in_features)  # (*, in) -> (N, in)
        y = x2 @ weight.T  # (N, in) @ (in, out) -> (N, out)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], out_features)  # (N, out) -> (*, out)

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        x, weight = self.saved
        out_features, in_features = weight.shape
        dy2 = dy.reshape(-1, out_features)  # (*, out) -> (N, out)
        dx = dW = db = None
        # forward: y = x @ Wᵀ + b
        if self.needs_input_grad[0]:
            dx = (dy2 @ weight).reshape(x.shape)  # (N, out) @ (out, in) -> (*, in)
        if self.needs_input_grad[1]:
            dW = dy2.T @ x.reshape(-1, in_features)  # (out, N) @ (N, in) -> (out, in)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            db = _column_sum(dy2)  # (out,)
        return dx, dW, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: x (*, in), weight (out, in), bias (out,) -> (*, out)."""
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------- softmax
def _last_axis_max(x: Any) -> Any:
    """x.max(axis=-1, keepdims=True), computed as a tree of elementwise maxima of halves.

    NumPy's max over short contiguous rows runs an unvectorised loop (about 1 ns an element
    here); np.maximum of two halves is vectorised, and log2(n) of them on shrinking halves
    cost less than one pass of the slow reduction. NaN and -inf propagate as in max."""
    xp = backend.get_array_module(x)
    if xp is not backend.numpy or x.shape[-1] < 16:
        return x.max(axis=-1, keepdims=True)
    m = x
    while m.shape[-1] > 1:
        n, half = m.shape[-1], m.shape[-1] // 2
        top = xp.maximum(m[..., :half], m[..., half:2 * half])
        if n % 2:  # the odd one out joins the first column
            xp.maximum(top[..., :1], m[..., -1:], out=top[..., :1])
        m = top
    return m


def _last_axis_sum(x: Any) -> Any:
    """x.sum(axis=-1, keepdims=True) as one matrix-vector product (BLAS) when x is contiguous."""
    xp = backend.get_array_module(x)
    if xp is not backend.numpy or not x.flags.c_contiguous or x.ndim < 2:
        return x.sum(axis=-1, keepdims=True)
    n = x.shape[-1]
    return (x.reshape(-1, n) @ xp.ones(n, dtype=x.dtype)).reshape(x.shape[:-1] + (1,))


def _softmax(x: Any, axis: int, out: Any = None) -> Any:
    """softmax along ``axis``: exp(x) / sum exp(x), computed so that exp cannot overflow.

    softmax(x) = softmax(x - c) for any constant c per row; the textbook c is the row max,
    which keeps every exp(x - c) in (0, 1]. On the last axis (attention's rows) finding the
    max costs about as much as the rest of softmax, so c = 0 is tried first and kept when
    a row's sum of exp is a finite number no smaller than n·tiny (n terms): then no exp
    overflowed, the row's largest term is a normal float, and the result is as accurate as the
    shifted one (it even skips the rounding of x - c). Any other row is recomputed on its own
    with its max, so each row's result depends on that row alone.
    ``out`` (optional) receives the result and must not be x.
    """
    xp = backend.get_array_module(x)
    if axis not in (-1, x.ndim - 1):
        y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return y
    with backend.overflow_ok(xp):  # an overflowing row is caught below and redone
        y = xp.exp(x, out=out)
    total = _last_axis_sum(y)  # (*, 1)
    bad = _unusable_sums(total, x.shape[-1])[..., 0]  # (*): rows to redo, each on its own
    if bad.any():
        xb = x[bad]  # (rows, n)
        yb = xp.exp(xb - _last_axis_max(xb))  # every row's max becomes 0, so 1 <= sum <= n
        y[bad] = yb
        total[bad] = _last_axis_sum(yb)
    y *= xp.reciprocal(total, out=total)
    return y


def _unusable_sums(total: Any, n: int) -> Any:
    """Rows whose sum of unshifted exp is not a finite number of at least n·tiny (NaN, an
    overflow to inf, or so small that the row's largest term may have lost precision)."""
    xp = backend.get_array_module(total)
    lo = float(xp.finfo(total.dtype).tiny) * n
    return ~((total >= lo) & (total < math.inf))


def _softmax_backward(y: Any, dy: Any, axis: int, inplace: bool = False, scratch: Any = None) -> Any:
    """forward: y = softmax(x)  =>  dx = y * (dy - sum(y * dy)).

    Because dy_i/dx_j = y_i (δ_ij - y_j):  dx_j = sum_i dy_i y_i (δ_ij - y_j)
                                              = y_j (dy_j - sum_i y_i dy_i).
    With ``inplace`` the result overwrites dy; ``scratch`` (shape of y) holds y * dy.
    """
    xp = backend.get_array_module(y)
    yd = xp.multiply(y, dy, out=scratch)
    s = _last_axis_sum(yd) if axis in (-1, y.ndim - 1) else yd.sum(axis=axis, keepdims=True)
    dx = dy if inplace else dy.copy()
    dx -= s
    dx *= y
    return dx


class Softmax(Function):
    """y = exp(x - max x) / sum exp(x - max x) along ``axis``.

    dx = y * (dy - sum(y * dy)) along ``axis``. Saves y (same shape as x).
    """

    def forward(self, x: Any, axis: int = -1) -> Any:
        self.axis = axis
        self.saved = _softmax(x, axis)
        return self.saved

    def backward(self, dy: Any) -> Any:
        return _softmax_backward(self.saved, dy, self.axis)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Numerically stable softmax along ``axis`` (rows sum to 1)."""
    return Softmax.apply(x, axis=axis)


def _logsumexp(x: Any, axis: int) -> Any:
    """log(sum(exp(x))) along ``axis`` (kept as a size-1 axis), without overflow."""
    xp = backend.get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) along ``axis``.

    dy_i/dx_j = δ_ij - softmax(x)_j, so dx = dy - softmax(x) * sum(dy), with
    softmax(x) = exp(y). Saves y.
    """

    def forward(self, x: Any, axis: int = -1) -> Any:
        self.axis = axis
        self.saved = x - _logsumexp(x, axis)
        return self.saved

    def backward(self, dy: Any) -> Any:
        xp = backend.get_array_module(dy)
        return dy - xp.exp(self.saved) * dy.sum(axis=self.axis, keepdims=True)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Numerically stable log(softmax(x)) along ``axis``."""
    return LogSoftmax.apply(x, axis=axis)


# ----------------------------------------------------------------------------- cross-entropy
class CrossEntropy(Function):
    """Mean negative log-likelihood of the targets under softmax(logits).

    logits (N, V) with targets (N,), or (B, T, V) with (B, T) (rows are flattened).
    Rows whose target is ``ignore_index`` count for nothing. With p = softmax(z_n) and
    M the number of counted rows:
        loss = (1/M) sum_n [logsumexp(z_n) - z_n[t_n]]
        dz_n = (p_n - onehot(t_n)) / M      for counted rows, 0 for ignored ones.
    ``reduction`` "sum" drops the 1/M; "none" returns the per-row losses (shape of targets).
    No target counted gives NaN for "mean", as torch does. Saves p (N, V) and the targets.
    """

    def forward(self, logits: Any, targets: Any, ignore_index: int = -100,
                reduction: str = "mean") -> Any:
        xp = backend.get_array_module(logits)
        V = logits.shape[-1]
        targets = xp.asarray(targets)
        if targets.shape != logits.shape[:-1]:
            raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match "
                             f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
        z = logits.reshape(-1, V)  # (*, V) -> (N, V)
        t = targets.reshape(-1).astype(xp.int64)  # (N,)
        counted = t != ignore_index  # (N,)
        t = xp.where(counted, t, 0)
        if t.size and (int(t.min()) < 0 or int(t.max()) >= V):
            raise IndexError(f"cross_entropy: target out of range: targets must lie in [0, {V}) or be ignore_index")
        rows = xp.arange(z.shape[0])
        shifted = z - _last_axis_max(z)  # (N, V), every row's max is 0
        p = xp.exp(shifted)
        total = _last_axis_sum(p)  # (N, 1), in [1, V]
        p /= total  # softmax(z)
        # -log p[t] = log(sum exp) - shifted[t]: from the shifted logits, not log(p), so p[t] = 0 stays finite
        nll = (xp.log(total[:, 0]) - shifted[rows, t]) * counted  # (N,), 0 where ignored
        self.saved = (p, t, counted)
        self.reduction, self.targets_shape = reduction, targets.shape
        if reduction == "none":
            return nll.reshape(targets.shape)
        if reduction == "sum":
            return nll.sum()
        self.count = int(counted.sum())
        if self.count == 0:
            return xp.asarray(float("nan"), dtype=logits.dtype)
        return nll.sum() / self.count

    def backward(self, dloss: Any) -> tuple[Any, None]:
        p, t, counted = self.saved
        xp = backend.get_array_module(p)
        rows = xp.arange(p.shape[0])
        # forward: loss_n = logsumexp(z_n) - z_n[t_n]  =>  dz_n = (p_n - onehot(t_n)) * dloss_n
        dz = p  # p is not needed after this: reuse its buffer
        dz[rows, t] -= 1
        if self.reduction == "none":
            scale = (dloss.reshape(-1) * counted)[:, None]  # (N, 1)
        elif self.reduction == "sum":
            scale = dloss * counted[:, None]
        else:
            scale = (dloss / max(self.count, 1)) * counted[:, None]
        dz *= scale.astype(dz.dtype, copy=False)
        return dz.reshape(*self.targets_shape, p.shape[-1]), None


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` (N, V) or (B, T, V) against int ``targets`` (N,) or (B, T).

    The mean over targets != ``ignore_index`` (``reduction="sum"`` or ``"none"`` as torch).
    """
    return CrossEntropy.apply(logits, _data(targets), ignore_index=ignore_index, reduction=reduction)


# ----------------------------------------------------------------------------- layer norm
class LayerNorm(Function):
    """Normalise each row over the last axis (C), then scale and shift:
        mu = mean(x), var = mean((x - mu)²), rstd = 1/sqrt(var + eps)
        xhat = (x - mu) * rstd,  y = xhat * w + b
    Backward, with g = dy * w (the gradient reaching xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over C)
        dw = sum over rows of dy * xhat,   db = sum over rows of dy
    (mean(g) is how shifting every x moves mu; xhat * mean(g * xhat) how scaling moves rstd.)
    Rows are processed in tiles that fit the cache. Saves xhat (*, C), rstd (*, 1) and w.
    """

    def forward(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
        xp = backend.get_array_module(x)
        C = x.shape[-1]
        x2 = x.reshape(-1, C)  # (N, C)
        N = x2.shape[0]
        xhat, y = xp.empty_like(x2), xp.empty_like(x2)
        rstd = xp.empty((N, 1), dtype=x.dtype)
        inv_c = xp.full(C, 1.0 / C, dtype=x.dtype)
        for r in backend.tiles(xp, N, C):
            xc = xhat[r]
            xp.subtract(x2[r], _row_mean(x2[r], inv_c), out=xc)  # x - mu
            yc = y[r]  # scratch for (x - mu)² before it holds y
            xp.multiply(xc, xc, out=yc)
            rs = rstd[r]
            rs[...] = _row_mean(yc, inv_c)  # var
            rs += eps
            xp.sqrt(rs, out=rs)
            xp.divide(1.0, rs, out=rs)  # rstd
            xc *= rs  # xhat
            if weight is not None:
                xp.multiply(xc, weight, out=yc)
            else:
                yc[...] = xc
            if bias is not None:
                yc += bias
        self.saved = (xhat, rstd, weight) if any(self.needs_input_grad) else None
        self.has_weight, self.has_bias, self.shape = weight is not None, bias is not None, x.shape
        return y.reshape(x.shape)

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        xhat, rstd, weight = self.saved
        xp = backend.get_array_module(dy)
        N, C = xhat.shape
        dy2 = dy.reshape(N, C)
        need_x = self.needs_input_grad[0]
        need_w = self.has_weight and self.needs_input_grad[1]
        # forward: y = xhat * w + b
        db = _column_sum(dy2) if self.has_bias and self.needs_input_grad[2] else None
        inv_c = xp.full(C, 1.0 / C, dtype=dy.dtype)
        dw = xp.zeros(C, dtype=dy.dtype) if need_w else None
        dx = xp.empty_like(xhat) if need_x else None
        scratch = xp.empty((min(N, max(1, backend.TILE // C)) if xp is backend.numpy else N, C), dtype=dy.dtype)
        for r in backend.tiles(xp, N, C):
            xh, d, tmp = xhat[r], dy2[r], scratch[: r.stop - r.start]
            if need_w:
                xp.multiply(d, xh, out=tmp)
                dw += _column_sum(tmp)
            if not need_x:
                continue
            g = dx[r]
            if self.has_weight:
                xp.multiply(d, weight, out=g)  # g = dy * w
            else:
                g[...] = d
            # forward: xhat = (x - mu) * rstd  =>  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
            xp.multiply(g, xh, out=tmp)
            m2 = _row_mean(tmp, inv_c)
            g -= _row_mean(g, inv_c)
            xp.multiply(xh, m2, out=tmp)
            g -= tmp
            g *= rstd[r]
        return (dx.reshape(self.shape) if need_x else None), dw, db


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis of x (*, C), with optional weight and bias (C,)."""
    args = [x, weight, bias]
    while args and args[-1] is None:  # trailing Nones need no slot
        args.pop()
    return LayerNorm.apply(*args, eps=eps)


# ----------------------------------------------------------------------------- GELU
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


class GELU(Function):
    """GELU, tanh form (GPT-2; torch ``approximate="tanh"``):
        u = k (x + a x³),  k = sqrt(2/π), a = 0.044715
        y = 0.5 x (1 + tanh u)
        dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) k (1 + 3 a x²)
              = (1 + tanh u) (0.5 + 0.5 x k (1 + 3 a x²) (1 - tanh u))     (1 - t² = (1 + t)(1 - t))
    Forward computes dy/dx as it goes (tile by tile, while x and tanh u are in cache) and
    saves only that: backward is then one multiply. The factored form shares (1 + tanh u)
    with y, so the whole forward is 15 array passes. Saves dy/dx (shape of x), nothing in no_grad.
    ``inplace=True`` writes y over x's array (each tile's x is read before its y is written),
    for a caller whose x is used by nothing else, as the MLP's c_fc output: one array fewer to
    allocate and to pass through the cache.
    """

    def forward(self, x: Any, inplace: bool = False) -> Any:
        xp = backend.get_array_module(x)
        contiguous = xp.ascontiguousarray(x)
        y = contiguous if inplace and contiguous is x and backend.writeable(x) else xp.empty_like(x)
        x = contiguous
        deriv = xp.empty_like(x) if self.needs_input_grad[0] else None
        xf, yf = x.reshape(-1), y.reshape(-1)
        df = deriv.reshape(-1) if deriv is not None else None
        n = min(x.size, backend.TILE) if xp is backend.numpy else x.size
        s_buf, t_buf = xp.empty(n, x.dtype), xp.empty(n, x.dtype)
        for sl in backend.tiles(xp, x.size):
            xc, yc = xf[sl], yf[sl]
            s, t = s_buf[: xc.size], t_buf[: xc.size]
            xp.multiply(xc, xc, out=s)  # x²
            # t = tanh(u), u = x k (1 + a x²)
            xp.multiply(s, _GELU_A * _GELU_K, out=t)
            t += _GELU_K
            t *= xc
            xp.tanh(t, out=t)
            xp.multiply(xc, 0.5, out=yc)  # yc holds x/2 until the end
            if df is not None:
                # dy/dx = (1 + t) (0.5 + (x/2) k (1 + 3 a x²) (1 - t))
                dc = df[sl]
                s *= 3.0 * _GELU_A * _GELU_K
                s += _GELU_K
                s *= yc
                xp.subtract(1.0, t, out=dc)
                s *= dc
                s += 0.5
            t += 1.0
            yc *= t  # y = (x/2) (1 + t)
            if df is not None:
                xp.multiply(s, t, out=dc)
        self.saved = deriv
        return y

    def backward(self, dy: Any) -> Any:
        # forward: y = gelu(x)  =>  dx = dy * dy/dx, written over dy/dx (a graph runs backward once)
        deriv = self.saved
        deriv *= dy
        return deriv


def gelu(x: Tensor) -> Tensor:
    """GELU with the tanh approximation, as in GPT-2."""
    return GELU.apply(x)


# ----------------------------------------------------------------------------- dropout
def _dropout_mask(like: Any, p: float) -> Any:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p), in like's dtype and device."""
    keep = backend.uniform(like.shape, like.dtype, backend.device_of(like)) >= p
    mask = keep.astype(like.dtype)
    mask *= 1.0 / (1.0 - p) if p < 1 else 0.0
    return mask


class Dropout(Function):
    """y = x * mask, mask = keep / (1 - p) with keep ~ Bernoulli(1 - p)  (inverted dropout:
    the expected value of y is x, so nothing changes at eval time).
    dx = dy * mask. Saves mask (shape of x).
    """

    def forward(self, x: Any, p: float) -> Any:
        self.saved = _dropout_mask(x, p)
        return x * self.saved

    def backward(self, dy: Any) -> Any:
        return dy * self.saved


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p).

    The identity (the very same tensor) when ``training`` is False or ``p`` is 0.
    """
    _check_p(p)
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return Dropout.apply(x, p=p)


# ----------------------------------------------------------------------------- attention
# Causal scaled-dot-product attention has a module of its own, minigpt/attention.py (it needs the
# softmax and dropout helpers above); it is part of this functional API all the same.
from minigpt.attention import (  # noqa: E402, F401 - re-exported: part of this module's API
    ScaledDotProductAttention,
    _additive_causal_mask,
    attention_backward,
    attention_forward,
    causal_mask,
    scaled_dot_product_attention,
)
