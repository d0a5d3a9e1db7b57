"""The neural-network ops, each a forward with a backward written by hand from the math.

This is the REFERENCE engine: every op here is its math and nothing else, whole arrays in,
whole arrays out, forward and backward side by side. Read this file to learn backprop.
(``minigpt/fast/`` holds twins of some of these ops that compute the same thing faster on a
CPU; ``tests/test_fast.py`` holds each twin equal to the op here.)

Legend: B batch, T time (sequence), S key positions, C channels, V vocab, nh heads,
hs head size, N rows (any leading axes flattened), "*" any leading axes.

Every op reads its array module from its inputs (``xp``), so one code path runs on
NumPy and CuPy, and keeps its inputs' float dtype (float32 stays float32: constants are
Python numbers, which NumPy and CuPy do not let promote an array).

Each docstring states the forward, the gradient and what is saved for backward.
Each backward mirrors its forward in reverse, with the forward line it inverts above it.
docs/derivations.md derives every gradient at more length.
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt.ops import AxisError, as_rows
from minigpt.tensor import Function, Tensor, unbroadcast

__all__ = ["embedding", "linear", "softmax", "log_softmax", "cross_entropy", "layer_norm",
           "gelu", "dropout", "scaled_dot_product_attention"]


# ----------------------------------------------------------------------------- embedding
def checked_indices(idx: Any, n: int, what: str, ignore: int | None = None) -> Any:
    """``idx`` as an int array of its own array module, after raising IndexError unless every
    entry lies in [0, n) (or equals ``ignore``).

    Called BEFORE the indices move to the weights' device: host indices (a list, a NumPy
    array, as the training loop's batches are) are checked on the host for free. Indices
    already on a GPU are checked there, and raising needs the answer on the host: that one
    check reads a single bool back (a synchronisation), which is why the training loop keeps
    its batches on the host until the ops move them."""
    ixp = backend.get_array_module(idx)
    idx = ixp.asarray(idx)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{what} must be integers, not {idx.dtype}")
    bad = (idx < 0) | (idx >= n)
    if ignore is not None:
        bad &= idx != ignore
    if bad.any():
        raise IndexError(f"{what} out of range: indices must lie in [0, {n})")
    return idx


class Embedding(Function):
    """out[*, :] = weight[idx[*], :]: row lookup.

    Each output row is a copy of one weight row, so weight row v receives the sum of
    the output gradients of every position whose index is v:
        dweight[v] = sum_{n : idx[n] = v} dout[n]          (a scatter-add)
    idx gets no gradient. Saves idx (the int array, *).
    """

    def forward(self, idx: Any, weight: Any) -> Any:
        idx = checked_indices(idx, weight.shape[0], "embedding indices")
        idx = backend.move(idx, backend.device_of(weight))  # checked where they were, now beside weight
        self.saved, self.weight_shape = idx, weight.shape
        return weight[idx]  # (*) -> (*, C)

    def backward(self, dout: Any) -> tuple[None, Any]:
        idx = self.saved
        xp = backend.get_array_module(dout)
        V, C = self.weight_shape
        # forward: out[n] = weight[idx[n]]  =>  dweight[idx[n]] += dout[n], for every n
        dweight = xp.zeros((V, C), dtype=dout.dtype)
        xp.add.at(dweight, idx.reshape(-1), as_rows(dout))  # add.at adds repeated indices up
        return None, dweight


def embedding(idx: Any, weight: Tensor) -> Tensor:
    """Look up rows of ``weight`` (V, C) at integer ``idx`` (*): returns (*, C)."""
    return Embedding.apply(backend.unwrap(idx), weight)


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
        out_features = weight.shape[0]
        y = as_rows(x) @ weight.T  # (N, in) @ (in, out) -> (N, out)
        if bias is not None:
            y = y + bias
        return y.reshape(*x.shape[:-1], out_features)  # (N, out) -> (*, out)

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        x, weight = self.saved
        dy2 = as_rows(dy)  # (*, out) -> (N, out)
        dx = dW = db = None
        # forward: y = x @ Wᵀ + b
        if self.needs_input_grad[0]:
            dx = (dy2 @ weight).reshape(x.shape)  # (N, out) @ (out, in) -> (N, in) -> (*, in)
        if self.needs_input_grad[1]:
            dW = dy2.T @ as_rows(x)  # (out, N) @ (N, in) -> (out, in)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            db = dy2.sum(axis=0)  # (N, out) -> (out,)
        return dx, dW, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias``: x (*, in), weight (out, in), bias (out,) -> (*, out)."""
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------- softmax
def softmax_forward(x: Any, axis: int) -> Any:
    """softmax on arrays: exp(x - max x) / sum exp(x - max x) along ``axis``.

    Subtracting the row max changes nothing (the factor exp(-max) cancels) and keeps every
    exp in (0, 1], so nothing overflows. A row that is all -inf gives NaN, as in torch."""
    xp = backend.get_array_module(x)
    if x.size == 0:  # an empty batch or empty rows: nothing to normalise, an empty result (as torch)
        return x.copy()
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(y: Any, dy: Any, axis: int) -> Any:
    """forward: y = softmax(x)  =>  dx = y * (dy - sum(y * dy)).

    Because ∂y_i/∂x_j = y_i (δ_ij - y_j):  dx_j = sum_i dy_i y_i (δ_ij - y_j)
                                              = y_j (dy_j - sum_i y_i dy_i).
    """
    return y * (dy - (y * dy).sum(axis=axis, keepdims=True))


def as_row_if_scalar(x: Any, axis: int) -> tuple[Any, int]:
    """(x, axis) for a softmax: a 0-d x as a row of one element and its last axis (torch takes axis
    0 or -1 on a 0-d tensor; a GPU's reductions take no axis at all on a 0-d array); anything
    else as it is."""
    if x.ndim:
        return x, axis
    if axis not in (0, -1):
        raise AxisError(f"axis {axis} is out of bounds for array of dimension 0")
    return x.reshape(1), -1


class Softmax(Function):
    """y = exp(x - max x) / sum exp(x - max x) along ``axis``.

    dx = y * (dy - sum(y * dy)) along ``axis``. Saves y (same shape as x).
    """

    # the math on arrays, the two functions above; fast.Softmax swaps in its own pair
    forward_fn = staticmethod(softmax_forward)
    backward_fn = staticmethod(softmax_backward)

    def forward(self, x: Any, axis: int = -1) -> Any:
        self.shape = x.shape
        x, self.axis = as_row_if_scalar(x, axis)
        self.saved = self.forward_fn(x, self.axis)
        return self.saved.reshape(self.shape)

    def backward(self, dy: Any) -> Any:
        # forward: y = softmax(x)  =>  dx = y * (dy - sum(y * dy))
        return self.backward_fn(self.saved, dy.reshape(self.saved.shape), self.axis).reshape(self.shape)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Numerically stable softmax along ``axis`` (rows sum to 1)."""
    return Softmax.apply(x, axis=axis)


def log_softmax_forward(x: Any, axis: int) -> Any:
    """log softmax on arrays: x - logsumexp(x) along ``axis``, computed as
        (x - max) - log(sum(exp(x - max)))
    Every exp is in (0, 1] (no overflow) and the sum in [1, n], so its log is small; and the
    log is subtracted from x - max, not added to max first: for logits near 1e4 in float32,
    max + log(sum) would round to a float32 ulp of 1e4 (0.001) before the subtraction (as torch)."""
    xp = backend.get_array_module(x)
    if x.size == 0:  # an empty batch or empty rows: an empty result (as torch)
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class LogSoftmax(Function):
    """y = x - logsumexp(x) along ``axis``, logsumexp(x) = log(sum(exp(x))).

    ∂y_i/∂x_j = δ_ij - softmax(x)_j, so dx = dy - softmax(x) * sum(dy), with
    softmax(x) = exp(y). Saves y.
    """

    def forward(self, x: Any, axis: int = -1) -> Any:
        self.shape = x.shape
        x, self.axis = as_row_if_scalar(x, axis)
        self.saved = log_softmax_forward(x, self.axis)
        return self.saved.reshape(self.shape)

    def backward(self, dy: Any) -> Any:
        # forward: y = x - logsumexp(x)  =>  dx = dy - softmax(x) * sum(dy), softmax(x) = exp(y)
        xp = backend.get_array_module(dy)
        dy = dy.reshape(self.saved.shape)
        return (dy - xp.exp(self.saved) * dy.sum(axis=self.axis, keepdims=True)).reshape(self.shape)


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Numerically stable log(softmax(x)) along ``axis``."""
    return LogSoftmax.apply(x, axis=axis)


# ----------------------------------------------------------------------------- cross-entropy
class CrossEntropy(Function):
    """Mean negative log-likelihood of the targets under softmax(logits), via log-softmax.

    logits (N, V) with targets (N,), or (B, T, V) with (B, T) (rows are flattened).
    Rows whose target is ``ignore_index`` count for nothing. With M the number of counted rows:
        logp_n = z_n - logsumexp(z_n)                    (log-softmax of row n)
        loss   = -(1/M) sum_n logp_n[t_n]
        dz_n   = (exp(logp_n) - onehot(t_n)) / M         for counted rows, 0 for ignored ones
    (the log-softmax backward with an upstream gradient of -1/M at t_n: exp(logp) is softmax).
    ``reduction`` "sum" drops the 1/M; "none" returns the per-row losses (shape of targets).
    No target counted gives NaN for "mean", as torch does. Saves logp (N, V) and the targets.
    """

    def forward(self, logits: Any, targets: Any, ignore_index: int = -100,
                reduction: str = "mean") -> Any:
        xp = backend.get_array_module(logits)
        t, counted = check_targets(logits, targets, ignore_index, reduction)  # (N,), (N,)
        z = as_rows(logits)  # (*, V) -> (N, V)
        z = xp.where(counted[:, None], z, 0.0)  # an ignored row may hold inf or NaN: keep it out of the math
        logp = log_softmax_forward(z, axis=-1)  # (N, V): z - logsumexp(z)
        nll = xp.where(counted, -logp[xp.arange(len(t)), t], 0.0)  # (N,), 0 where ignored
        self.saved = (logp, t, counted)
        self.reduction, self.targets_shape = reduction, logits.shape[:-1]
        if reduction == "none":
            return nll.reshape(self.targets_shape)
        if reduction == "sum":
            return nll.sum()
        loss, self.count = mean_over_counted(nll, counted)
        return loss

    def backward(self, dloss: Any) -> tuple[Any, None]:
        logp, t, counted = self.saved
        xp = backend.get_array_module(logp)
        # forward: loss_n = -logp_n[t_n], logp_n = z_n - logsumexp(z_n)  =>  dz_n = softmax(z_n) - onehot(t_n)
        dz = xp.exp(logp)
        dz[xp.arange(len(t)), t] -= 1
        # times the upstream gradient of each row's loss (and 1/M for the mean); ignored rows get 0
        if self.reduction == "none":
            dz *= dloss.reshape(-1, 1)
        elif self.reduction == "mean":
            dz *= dloss / self.count
        else:
            dz *= dloss
        dz = xp.where(counted[:, None], dz, 0.0)
        return dz.reshape(*self.targets_shape, logp.shape[-1]), None


def check_targets(logits: Any, targets: Any, ignore_index: int, reduction: str) -> tuple[Any, Any]:
    """The targets of cross_entropy, checked where they are, then moved to the logits' device
    and flattened: (t (N,) int64 with ignored rows pointing at class 0, counted (N,) bool)."""
    xp = backend.get_array_module(logits)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"cross_entropy: unknown reduction {reduction!r}")
    targets = checked_indices(targets, logits.shape[-1], "cross_entropy: targets", ignore=ignore_index)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match "
                         f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    t = backend.move(targets.reshape(-1).astype("int64", copy=False), backend.device_of(logits))  # (N,)
    counted = t != ignore_index
    return xp.where(counted, t, 0), counted


def mean_over_counted(nll: Any, counted: Any) -> tuple[Any, Any]:
    """(the mean of ``nll`` (N,) over its M counted rows, M) as 0-d arrays; NaN when M = 0, as
    torch. M stays an array (at least 1, in nll's dtype) so that a GPU never waits for it to be
    read back: the division and the NaN choice happen on the device."""
    xp = backend.get_array_module(nll)
    m = counted.sum().astype(nll.dtype)  # M, exact up to 2^24 rows in float32
    count = xp.maximum(m, 1)
    return xp.where(m > 0, nll.sum() / count, math.nan), count


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Cross-entropy of ``logits`` (N, V) or (B, T, V) against int ``targets`` (N,) or (B, T).

    The mean over targets != ``ignore_index`` (``reduction="sum"`` or ``"none"`` as torch).
    """
    return CrossEntropy.apply(logits, backend.unwrap(targets), ignore_index=ignore_index, reduction=reduction)


# ----------------------------------------------------------------------------- layer norm
class LayerNorm(Function):
    """Normalise each row over the last axis (C), then scale and shift:
        mu = mean(x), var = mean((x - mu)²), rstd = 1/sqrt(var + eps)
        xhat = (x - mu) * rstd,  y = xhat * w + b
    Backward, with g = dy * w (the gradient reaching xhat):
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over C)
        dw = sum over rows of dy * xhat,   db = sum over rows of dy
    (mean(g) is how shifting every x moves mu; xhat * mean(g * xhat) how scaling moves rstd.)
    Saves xhat (*, C), rstd (*, 1) and w.
    """

    def forward(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
        xp = backend.get_array_module(x)
        mu = x.mean(axis=-1, keepdims=True)  # (*, 1)
        xc = x - mu  # (*, C)
        var = (xc * xc).mean(axis=-1, keepdims=True)  # (*, 1)
        rstd = 1.0 / xp.sqrt(var + eps)  # (*, 1)
        xhat = xc * rstd  # (*, C)
        y = xhat if weight is None else xhat * weight
        if bias is not None:
            y = y + bias
        self.saved = (xhat, rstd, weight)
        self.has_bias = bias is not None
        return y

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        xhat, rstd, weight = self.saved
        rows = tuple(range(dy.ndim - 1))  # every axis but C
        # forward: y = xhat * w + b
        db = dy.sum(axis=rows) if self.has_bias else None  # (C,)
        dw = (dy * xhat).sum(axis=rows) if weight is not None else None  # (C,)
        g = dy if weight is None else dy * weight  # (*, C): the gradient reaching xhat
        # forward: xhat = (x - mu) * rstd  =>  dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
        dx = rstd * (g - g.mean(axis=-1, keepdims=True) - xhat * (g * xhat).mean(axis=-1, keepdims=True))
        return dx, dw, db


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis of x (*, C), with optional weight and bias (C,)."""
    args = [x, weight, bias]
    while args and args[-1] is None:  # trailing Nones need no slot
        args.pop()
    return LayerNorm.apply(*args, eps=eps)


# ----------------------------------------------------------------------------- GELU
GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


class GELU(Function):
    """GELU, tanh form (GPT-2; torch ``approximate="tanh"``). GELU is x·Φ(x), Φ the standard normal
    CDF; GPT-2 approximates Φ(x) by 0.5 (1 + tanh u) (within 0.0005 of the exact GELU everywhere):
        u = k (x + a x³),  k = sqrt(2/π), a = 0.044715
        y = gelu(x) = 0.5 x (1 + tanh u)
        gelu′(x) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh² u) k (1 + 3 a x²)      (product rule)
        dx = dy * gelu′(x)
    Saves x (the backward recomputes tanh u from it).
    """

    def forward(self, x: Any) -> Any:
        xp = backend.get_array_module(x)
        self.saved = x
        return 0.5 * x * (1.0 + xp.tanh(GELU_K * (x + GELU_A * x * x * x)))

    def backward(self, dy: Any) -> Any:
        xp = backend.get_array_module(dy)
        x = self.saved
        t = xp.tanh(GELU_K * (x + GELU_A * x * x * x))
        # forward: y = 0.5 x (1 + tanh u)  =>  gelu′(x) = 0.5 (1 + t) + 0.5 x (1 - t²) u′(x)
        gelu_prime = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_K * (1.0 + 3.0 * GELU_A * x * x)
        return dy * gelu_prime


def gelu(x: Tensor) -> Tensor:
    """GELU with the tanh approximation, as in GPT-2."""
    return GELU.apply(x)


# ----------------------------------------------------------------------------- dropout
def dropout_mask(like: Any, p: float) -> Any:
    """Inverted-dropout mask: 0 with probability p, else 1/(1-p), in like's dtype and device."""
    xp = backend.get_array_module(like)
    u = backend.uniform(like.shape, like.dtype, backend.device_of(like))  # uniform in [0, 1)
    keep = u >= p  # True with probability 1 - p
    return xp.multiply(keep, 1.0 / (1.0 - p) if p < 1 else 0.0, out=u)  # 1/(1-p) or 0, written over u


def check_p(p: float) -> None:
    """A dropout probability must lie in [0, 1] (torch's message)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


class Dropout(Function):
    """y = x * mask, mask = keep / (1 - p) with keep ~ Bernoulli(1 - p)  (inverted dropout:
    the expected value of y is x, so nothing changes at eval time).
    dx = dy * mask. Saves mask (shape of x).
    """

    def forward(self, x: Any, p: float) -> Any:
        self.saved = dropout_mask(x, p)
        return x * self.saved

    def backward(self, dy: Any) -> Any:
        # forward: y = x * mask  =>  dx = dy * mask
        return dy * self.saved


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p).

    The identity (the very same tensor) when ``training`` is False or ``p`` is 0.
    """
    check_p(p)
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return Dropout.apply(x, p=p)


# ----------------------------------------------------------------------------- attention
def causal_mask(T: int, S: int, xp: Any) -> Any:
    """(T, S) bool, True where query i may look at key j (j <= i), as torch's is_causal."""
    return xp.tril(xp.ones((T, S), dtype=bool))


def attention_weights(q: Any, k: Any, is_causal: bool, scale: float) -> Any:
    """att = softmax(q @ kᵀ * scale, with the future masked out), on arrays:
    q (*, T, hs), k (*, S, hs) -> att (*, T, S), each row a distribution over the keys."""
    xp = backend.get_array_module(q)
    scores = q @ xp.swapaxes(k, -1, -2) * scale  # (*, T, hs) @ (*, hs, S) -> (*, T, S)
    if is_causal:
        scores = xp.where(causal_mask(q.shape[-2], k.shape[-2], xp), scores, -math.inf)
    return softmax_forward(scores, axis=-1)  # the masked entries become exactly 0


class ScaledDotProductAttention(Function):
    """y = softmax(q kᵀ * scale + mask) v, scale = 1/sqrt(hs) by default; -inf above the diagonal if causal.

    q (B, nh, T, hs), k and v (B, nh, S, hs) -> y (B, nh, T, hs), for T queries and S keys (S = T in
    self-attention). Forward:
        scores = q @ kᵀ * scale              (B, nh, T, S)
        att = softmax(masked scores)         the future (j > i) set to -inf, so its weight is exactly 0
        att_d = att * drop                   (drop: inverted-dropout mask, when dropout_p > 0)
        y = att_d @ v
    Backward, in reverse:
        dv = att_dᵀ @ dy,   datt_d = dy @ vᵀ
        datt = datt_d * drop
        dscores = att * (datt - sum(att * datt))      (softmax backward; masked entries stay 0)
        dq = dscores @ k * scale,   dk = dscoresᵀ @ q * scale
    The leading (batch) axes of q, k and v broadcast against each other as in matmul (one k
    and v shared by every head, say); each gradient is then summed back to its input's shape.
    Saves q, k, v, att (B, nh, T, S) and, with dropout, its mask (B, nh, T, S).
    """

    def forward(self, q: Any, k: Any, v: Any, is_causal: bool = True, dropout_p: float = 0.0,
                scale: float | None = None) -> Any:
        self.scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        att = attention_weights(q, k, is_causal, self.scale)  # (B, nh, T, S)
        drop = dropout_mask(att, dropout_p) if dropout_p > 0.0 else None
        att_d = att if drop is None else att * drop
        self.saved = (q, k, v, att, drop)
        return att_d @ v  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        q, k, v, att, drop = self.saved
        xp = backend.get_array_module(dy)
        # forward: y = att_d @ v
        att_d = att if drop is None else att * drop
        dv = xp.swapaxes(att_d, -1, -2) @ dy  # (B, nh, S, T) @ (B, nh, T, hs) -> (B, nh, S, hs)
        datt = dy @ xp.swapaxes(v, -1, -2)  # (B, nh, T, hs) @ (B, nh, hs, S) -> (B, nh, T, S)
        # forward: att_d = att * drop
        if drop is not None:
            datt = datt * drop
        # forward: att = softmax(scores), scores = q @ kᵀ * scale  =>  dq = dscores @ k * scale, dk likewise;
        # the scale is applied once, to the (B, nh, T, S) array that the two products share
        dscores_scaled = softmax_backward(att, datt, axis=-1) * self.scale  # scale · dL/dscores
        dq = dscores_scaled @ k  # (B, nh, T, S) @ (B, nh, S, hs) -> (B, nh, T, hs)
        dk = xp.swapaxes(dscores_scaled, -1, -2) @ q  # (B, nh, S, T) @ (B, nh, T, hs) -> (B, nh, S, hs)
        # forward: q, k, v broadcast to the shape of att's batch  =>  sum back over what was added
        return unbroadcast(dq, q.shape), unbroadcast(dk, k.shape), unbroadcast(dv, v.shape)


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, is_causal: bool = True,
                                 dropout_p: float = 0.0, scale: float | None = None) -> Tensor:
    """softmax(q kᵀ/√hs, causal mask) v: q (B, nh, T, hs), k and v (B, nh, S, hs) -> (B, nh, T, hs)."""
    check_p(dropout_p)
    return ScaledDotProductAttention.apply(q, k, v, is_causal=is_causal, dropout_p=dropout_p, scale=scale)


def split_heads(qkv: Any, n_head: int) -> Any:
    """Packed qkv (B, T, 3C), as c_attn writes it, seen as the heads of q, k and v:
    (B, T, 3, nh, hs) -> (3, B, nh, T, hs). An array view (no copy), for code outside the graph."""
    B, T, C3 = qkv.shape
    return qkv.reshape(B, T, 3, n_head, C3 // 3 // n_head).transpose(2, 0, 3, 1, 4)
