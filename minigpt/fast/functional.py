"""Fast twins of the ops in minigpt/functional.py: the same math, faster on a CPU.

Each twin subclasses its reference op (so it takes the same arguments and gives the same
values, which tests/test_fast.py checks at the sizes where every tile and branch runs) and
says in its docstring what it does differently and why. Read the reference first.

Legend: B batch, T time, C channels, V vocab, N rows (leading axes flattened), "*" any leading axes.
"""

from __future__ import annotations

from typing import Any

from minigpt import backend
from minigpt import functional as reference
from minigpt.fast import tiling
from minigpt.fast.reductions import column_sum, row_dot, row_max, row_mean, row_sum
from minigpt.ops import as_rows
from minigpt.tensor import Function, Tensor, unbroadcast

# ----------------------------------------------------------------------------- embedding
ONE_HOT_LIMIT = 1 << 22  # up to V * N = 4M elements the one-hot matrix pays (tests patch it both ways)


def scatter_add(dweight: Any, idx: Any, rows: Any) -> Any:
    """dweight[idx[n]] += rows[n] for every n, repeated indices adding up (add.at)."""
    xp = backend.get_array_module(dweight)
    xp.add.at(dweight, idx, rows)
    return dweight


class Embedding(reference.Embedding):
    """Twin of ``functional.Embedding``: the backward's scatter-add as one matrix product.

    dweight = onehot(idx)ᵀ @ dout, (V, N) @ (N, C): BLAS instead of add.at's element-by-element
    scatter, much faster for a small vocabulary (65 characters). Above ONE_HOT_LIMIT elements the
    one-hot matrix costs more than it saves, and the scatter-add runs as in the reference. So it
    does when the product is not finite: an inf or NaN in dout would reach every row of dweight
    there (0 * inf = NaN), where the scatter-add sends it to its own row only (as torch). Checking
    the (V, C) product costs less than checking dout (N, C) first.
    """

    def backward(self, dout: Any) -> tuple[None, Any]:
        idx = self.saved
        xp = backend.get_array_module(dout)
        V, C = self.weight_shape
        flat, rows = idx.reshape(-1), as_rows(dout)  # (N,), (N, C)
        if V * flat.size <= ONE_HOT_LIMIT:
            one_hot_t = xp.zeros((V, flat.size), dtype=dout.dtype)  # (V, N)
            one_hot_t[flat, xp.arange(flat.size)] = 1.0  # column n has its 1 in row idx[n]
            with tiling.overflow_ok(xp):  # an inf or NaN in dout: caught just below
                dweight = one_hot_t @ rows  # (V, N) @ (N, C) -> (V, C)
            if xp.isfinite(dweight).all():  # else dout held an inf or NaN (or a sum overflowed): scatter
                return None, dweight
        return None, scatter_add(xp.zeros((V, C), dtype=dout.dtype), flat, rows)


def embedding(idx: Any, weight: Tensor) -> Tensor:
    """Twin of ``functional.embedding``."""
    return Embedding.apply(backend.unwrap(idx), weight)


# ----------------------------------------------------------------------------- linear
class Linear(reference.Linear):
    """Twin of ``functional.Linear``: one 2-D matrix product over the flattened rows, the bias
    added in place, and db as ones(N) @ dy (BLAS) instead of dy.sum(axis=0) (an unvectorised
    loop over short rows in NumPy)."""

    def forward(self, x: Any, weight: Any, bias: Any = None) -> Any:
        self.saved = (x, weight)
        out_features = weight.shape[0]
        y = as_rows(x) @ weight.T  # (N, in) @ (in, out) -> (N, out)
        if bias is not None:
            y += bias
        return y.reshape(*x.shape[:-1], out_features)  # (N, out) -> (*, out)

    def backward(self, dy: Any) -> tuple[Any, Any, Any]:
        x, weight = self.saved
        dy2 = as_rows(dy)  # (N, out)
        dx = dW = db = None
        if self.needs_input_grad[0]:
            dx = (dy2 @ weight).reshape(x.shape)  # (N, out) @ (out, in) -> (*, in)
        if self.needs_input_grad[1]:
            dW = dy2.T @ as_rows(x)  # (out, N) @ (N, in) -> (out, in)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            db = column_sum(dy2)  # (out,)
        return dx, dW, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Twin of ``functional.linear``."""
    return Linear.apply(x, weight) if bias is None else Linear.apply(x, weight, bias)


# ----------------------------------------------------------------------------- softmax
# Above this share of rows to redo, softmax_forward redoes every row: gathering and scattering many
# rows costs more than redoing them all, as the reference does. Tests patch it both ways.
REDO_ALL_ABOVE = 1 / 8


def softmax_forward(x: Any, axis: int, out: Any = None) -> Any:
    """Twin of ``functional.softmax_forward``: skips the row max where it is not needed.

    softmax(x) = softmax(x - c) for any c per row; the reference takes c = the row max. Finding
    it costs about as much as the rest of softmax on attention's short rows, so on the last axis
    c = 0 is tried first and kept for the rows whose sum of exp lies in [1, 1/tiny] (tiny: the
    smallest normal float). Such a row lost nothing: no exp overflowed; an element whose result
    y_i = exp(x_i) / sum is a normal float had exp(x_i) = y_i · sum >= tiny, a normal float too,
    computed to full precision (a subnormal exp can only make a subnormal y_i, which the shifted
    softmax rounds as coarsely); and 1/sum is normal. Any other row (an overflow, NaN, or every
    term small) is recomputed on its own with its max (the max tree of reductions.row_max), so
    each row's result depends on that row alone. ``out`` (optional) receives the result and must
    not be x.
    """
    xp = backend.get_array_module(x)
    if x.size == 0:  # empty: nothing to normalise, the reference's result
        y = reference.softmax_forward(x, axis)
        if out is None:
            return y
        xp.copyto(out, y)
        return out
    if axis not in (-1, x.ndim - 1):
        y = xp.subtract(x, x.max(axis=axis, keepdims=True), out=out)
        xp.exp(y, out=y)
        y /= y.sum(axis=axis, keepdims=True)
        return y
    with tiling.overflow_ok(xp):  # an overflowing row is caught below and redone
        y = xp.exp(x, out=out)
        total = row_sum(y)  # (*, 1)
    total = redo_unusable_rows(x, y, total)
    y *= xp.reciprocal(total, out=total)
    return y


def redo_unusable_rows(x: Any, e: Any, total: Any, shifted: Any = None) -> Any:
    """The rows of e = exp(x - c) (*, n) whose sums ``total`` (*, 1) are unusable (unusable_sums)
    done again with c = the row's max, as the reference does, in place in ``e`` (and in
    ``shifted``, x - c, for a caller that keeps it apart from e); returns the sums. A few rows
    (unshifted attention: ~1% of them, a first row whose one score is below 0) are redone each
    on its own; above REDO_ALL_ABOVE of them, gathering and scattering cost more than one pass
    over every row, and every row is redone."""
    xp = backend.get_array_module(x)
    bad = unusable_sums(total)[..., 0]  # (*): rows to redo
    n_bad = int(xp.count_nonzero(bad))
    if not n_bad:
        return total
    s = e if shifted is None else shifted
    if n_bad > REDO_ALL_ABOVE * bad.size:  # many: shift every row, as the reference does
        xp.subtract(x, row_max(x), out=s)
        xp.exp(s, out=e)
        return row_sum(e)
    xb = x[bad]  # (rows, n)
    sb = xb - row_max(xb)  # every row's max becomes 0, so 1 <= sum <= n
    if shifted is not None:
        shifted[bad] = sb
    e[bad] = eb = xp.exp(sb)
    total[bad] = row_sum(eb)
    return total


def unusable_sums(total: Any) -> Any:
    """Rows whose sum of unshifted exp is not in [1, 1/tiny] (see softmax_forward): NaN, an
    overflow, a sum whose reciprocal is subnormal, or terms so small that some lost precision."""
    xp = backend.get_array_module(total)
    hi = 1.0 / float(xp.finfo(total.dtype).tiny)
    return ~((total >= 1.0) & (total <= hi))


def softmax_backward(y: Any, dy: Any, axis: int, inplace: bool = False, scratch: Any = None) -> Any:
    """Twin of ``functional.softmax_backward``: dx = y * (dy - sum(y * dy)) with the row sum as
    a matrix-vector product; ``inplace`` writes dx over dy and ``scratch`` (shape of y) holds
    y * dy, so attention's backward allocates nothing per tile."""
    xp = backend.get_array_module(y)
    yd = xp.multiply(y, dy, out=scratch)
    s = row_sum(yd) if axis in (-1, y.ndim - 1) else yd.sum(axis=axis, keepdims=True)
    dx = dy if inplace else dy.copy()
    dx -= s
    dx *= y
    return dx


class Softmax(reference.Softmax):
    """Twin of ``functional.Softmax``: the unshifted forward and BLAS row sums above, in place
    of the reference's pair (its forward and backward are the reference's)."""

    forward_fn = staticmethod(softmax_forward)
    backward_fn = staticmethod(softmax_backward)


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    """Twin of ``functional.softmax``."""
    return Softmax.apply(x, axis=axis)


# ----------------------------------------------------------------------------- cross-entropy
class CrossEntropy(reference.CrossEntropy):
    """Twin of ``functional.CrossEntropy``: exp computed once, each row shifted by its target's
    logit rather than by its max, with a BLAS row sum; -log p[t] taken from the shifted logits
    and the sums; softmax's division left to backward, which does it in the pass that applies
    the chain rule's factor, over exp's buffer (the reference builds logp, then exp(logp) in
    backward: more (N, V) passes).

    softmax(z) = softmax(z - c) for any c per row; the reference takes c = the row max, which
    on rows as short as the logits' (65 characters) costs NumPy more than the exp. The
    target's logit z[t] is one gathered number per row, and shifted by it a row's sum of exp
    holds exp(0) = 1: it is at least 1, and -log p[t] = log(sum) - 0 is the log of a number
    >= 1, never a difference of two large ones. Where a logit lies about 87 or more above the
    target's (float32; exp overflows, or the sum's reciprocal would be subnormal), or a row
    holds inf or NaN, the sum is not usable and that row is redone shifted by its max, as the
    reference does (``redo_unusable_rows``, which the fast softmax uses too). Backward
    multiplies exp's row by s / total in one pass, unless that factor is subnormal
    (``loses_digits``: a small upstream gradient over a large sum), where it divides first, as
    the reference does.
    """

    def forward(self, logits: Any, targets: Any, ignore_index: int = -100,
                reduction: str = "mean") -> Any:
        xp = backend.get_array_module(logits)
        t, counted = reference.check_targets(logits, targets, ignore_index, reduction)
        z = as_rows(logits)  # (N, V)
        self.all_counted = bool(counted.all())
        if not self.all_counted:
            z = xp.where(counted[:, None], z, 0.0)  # an ignored row may hold inf or NaN: keep it out of the math
        rows = xp.arange(len(t))
        with tiling.overflow_ok(xp):  # a row whose exp overflows is caught below and redone
            shifted = z - z[rows, t][:, None]  # (N, V), 0 at each row's target
            p = xp.exp(shifted)
            total = row_sum(p)  # (N, 1), at least 1 where usable
        total = redo_unusable_rows(z, p, total, shifted)
        # -log p[t] = log(sum exp) - shifted[t]: from the shifted logits, not log(p), so p[t] = 0 stays finite
        nll = xp.log(total[:, 0]) - shifted[rows, t]  # (N,)
        if not self.all_counted:
            nll = xp.where(counted, nll, 0.0)
        # p = exp(shifted) is kept undivided: backward divides it by the row sums in the pass
        # that applies the chain rule's factor (the loss needs only the sums)
        self.saved = (p, total, t, counted)
        self.reduction, self.targets_shape = reduction, logits.shape[:-1]
        if reduction == "none":
            return nll.reshape(self.targets_shape)
        if reduction == "sum":
            return nll.sum()
        loss, self.count = reference.mean_over_counted(nll, counted)
        return loss

    def backward(self, dloss: Any) -> tuple[Any, None]:
        # forward: nll_n = -log softmax(z_n)[t_n]  =>  dz_n = (softmax(z_n) - onehot(t_n)) · s_n,
        # s_n the gradient reaching nll_n; softmax(z_n) = p_n / total_n, so dz_n = p_n · (s_n / total_n) - s_n onehot
        p, total, t, counted = self.saved
        xp = backend.get_array_module(p)
        if self.reduction == "none":
            s = dloss.reshape(-1, 1)  # (N, 1)
        elif self.reduction == "mean":
            s = dloss / self.count  # 0-d
        else:
            s = dloss
        rows = xp.arange(len(t))
        s_rows = s[:, 0] if self.reduction == "none" else s  # (N,) or 0-d
        at_target = p[rows, t] / total[:, 0]  # (N,) softmax at each target, read before p is overwritten
        dz = p  # p is not needed after this: its buffer becomes the gradient
        factor = s / total  # (N, 1)
        if loses_digits(factor):  # a small s over a large sum (a logit far above the target's)
            dz /= total  # softmax, then the chain rule's factor: the reference's order, two passes
            dz *= s
        else:
            dz *= factor  # softmax's division and the chain rule's factor, one pass
        # at the targets (softmax - 1) · s, the reference's formula (p · s/total - s would make an
        # infinite s into inf - inf = NaN there)
        dz[rows, t] = (at_target - 1.0) * s_rows
        if not self.all_counted:
            dz[~counted] = 0.0
        return dz.reshape(*self.targets_shape, p.shape[-1]), None


def loses_digits(factor: Any) -> bool:
    """Whether any of cross-entropy's per-row factors s / total is below the smallest normal float
    (subnormal or 0): multiplied into exp's row it would lose the digits that softmax's own
    division, made first, keeps. (A factor of exactly 0 from s = 0 counts too: harmless, just
    the slower order.)"""
    xp = backend.get_array_module(factor)
    return bool((xp.abs(factor) < xp.finfo(factor.dtype).tiny).any())


def cross_entropy(logits: Tensor, targets: Any, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """Twin of ``functional.cross_entropy``."""
    return CrossEntropy.apply(logits, backend.unwrap(targets), ignore_index=ignore_index, reduction=reduction)


# ----------------------------------------------------------------------------- layer norm
class LayerNorm(reference.LayerNorm):
    """Twin of ``functional.LayerNorm``: the same formulas, tile by tile over the rows.

    Each tile's chain (mean, center, square, mean, rsqrt, scale, shift) runs while the tile is
    in the L2 cache, writing into preallocated arrays (``out=``); row means are matrix-vector
    products with a vector of 1/C (reductions.row_mean), and the row sums of products (the
    variance's squares, backward's g · xhat) one pass each that writes no product array
    (reductions.row_dot). The reference makes a new array per step, each pass over the whole
    (N, C) array.
    """

    def forward(self, x: Any, weight: Any = None, bias: Any = None, eps: float = 1e-5) -> Any:
        xp = backend.get_array_module(x)
        C = x.shape[-1]
        x2 = as_rows(x)  # (N, C)
        N = x2.shape[0]
        xhat, y = xp.empty_like(x2), xp.empty_like(x2)
        rstd = xp.empty((N, 1), dtype=x.dtype)
        inv_n = 1.0 / max(C, 1)  # rows of width 0 are empty: any factor serves
        inv_c = xp.full(C, inv_n, dtype=x.dtype)
        for r in tiling.tiles(xp, N, C):
            xc = xhat[r]
            xp.subtract(x2[r], row_mean(x2[r], inv_c), out=xc)  # x - mu
            yc = y[r]  # scratch for (x - mu)² (where row_dot needs one) before it holds y
            rs = rstd[r]
            rs[...] = row_dot(xc, xc, yc)
            rs *= inv_n  # var
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
        db = column_sum(dy2) if self.has_bias and self.needs_input_grad[2] else None
        inv_n = 1.0 / max(C, 1)  # rows of width 0 are empty: any factor serves
        inv_c = xp.full(C, inv_n, dtype=dy.dtype)
        w_over_c = weight * inv_c if need_w else None
        dw = xp.zeros(C, dtype=dy.dtype) if need_w else None
        dx = xp.empty_like(xhat) if need_x else None
        scratch = xp.empty((tiling.tile_rows(xp, N, C), C), dtype=dy.dtype)
        for r in tiling.tiles(xp, N, C):
            xh, d, tmp = xhat[r], dy2[r], scratch[: r.stop - r.start]
            if need_w:
                xp.multiply(d, xh, out=tmp)
                dw += column_sum(tmp)
            if not need_x:
                continue
            g = dx[r]
            if self.has_weight:
                xp.multiply(d, weight, out=g)  # g = dy * w
            else:
                g[...] = d
            # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
            if need_w:  # mean(g * xhat) = (dy * xhat) @ (w / C): tmp holds dy * xhat already
                m2 = row_mean(tmp, w_over_c)
            else:
                m2 = row_dot(g, xh, tmp)
                m2 *= inv_n
            g -= row_mean(g, inv_c)
            xp.multiply(xh, m2, out=tmp)
            g -= tmp
            g *= rstd[r]
        return (dx.reshape(self.shape) if need_x else None), dw, db


def layer_norm(x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Twin of ``functional.layer_norm``."""
    args = [x, weight, bias]
    while args and args[-1] is None:
        args.pop()
    return LayerNorm.apply(*args, eps=eps)


# ----------------------------------------------------------------------------- GELU
class GELU(reference.GELU):
    """Twin of ``functional.GELU``: gelu′(x) computed in the forward pass, tile by tile, in 15
    array passes, so that backward is one multiply.

    The reference saves x and recomputes tanh u in backward (about 30 passes in all). Here,
    while x and tanh u are in cache, forward also writes gelu′(x) in the factored form
        gelu′(x) = (1 + tanh u) (0.5 + 0.5 x k (1 + 3 a x²) (1 - tanh u))     (1 - t² = (1 + t)(1 - t))
    which shares (1 + tanh u) with y. Saves gelu′(x) (shape of x), nothing in no_grad.
    ``inplace=True`` writes y over x's array (each tile's x is read before its y is written):
    one array fewer, for a caller that knows nothing else reads x, in the forward or the backward
    pass: fast.GPT, for the MLP's c_fc output (a linear layer saves its input, not its output).
    """

    def forward(self, x: Any, inplace: bool = False) -> Any:
        xp = backend.get_array_module(x)
        K, A = reference.GELU_K, reference.GELU_A
        contiguous = xp.ascontiguousarray(x)
        y = contiguous if inplace and contiguous is x and backend.writeable(x) else xp.empty_like(contiguous)
        x = contiguous
        deriv = xp.empty_like(x) if self.needs_input_grad[0] else None
        xf, yf = x.reshape(-1), y.reshape(-1)
        df = deriv.reshape(-1) if deriv is not None else None
        n = tiling.tile_rows(xp, x.size)
        s_buf, t_buf = xp.empty(n, x.dtype), xp.empty(n, x.dtype)
        for sl in tiling.tiles(xp, x.size):
            xc, yc = xf[sl], yf[sl]
            s, t = s_buf[: xc.size], t_buf[: xc.size]
            xp.multiply(xc, xc, out=s)  # x²
            # t = tanh(u), u = x k (1 + a x²)
            xp.multiply(s, A * K, out=t)
            t += K
            t *= xc
            xp.tanh(t, out=t)
            xp.multiply(xc, 0.5, out=yc)  # yc holds x/2 until the end
            if df is not None:
                # gelu′(x) = (1 + t) (0.5 + (x/2) k (1 + 3 a x²) (1 - t))
                dc = df[sl]
                s *= 3.0 * A * K
                s += K
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
        # dx = dy * gelu′(x), written over gelu′(x) (a graph runs backward once)
        deriv = self.saved
        deriv *= dy
        return deriv


def gelu(x: Tensor) -> Tensor:
    """Twin of ``functional.gelu``."""
    return GELU.apply(x)


# ----------------------------------------------------------------------------- residual add
class ResidualAdd(Function):
    """x + branch, written over branch's array (``inplace``): the residual connection x + f(x),
    for a caller that knows nothing else reads the branch output f(x), in the forward or the
    backward pass: fast.GPT, whose branches end in a linear layer (or dropout after one).
    Its reference is x + branch (ops.Add), which allocates a new array per block half.
    Backward: dx = dy, dbranch = dy. Saves nothing."""

    def forward(self, x: Any, branch: Any, inplace: bool = False) -> Any:
        xp = backend.get_array_module(x)
        self.shapes = (x.shape, branch.shape)
        if not inplace or branch.shape != x.shape or branch.dtype != x.dtype or not backend.writeable(branch):
            return x + branch  # broadcasting, or a branch not ours to write: a new array, as ops.Add
        return xp.add(branch, x, out=branch)  # a + b = b + a exactly, in floating point too

    def backward(self, dy: Any) -> tuple[Any, Any]:
        # forward: y = x + branch  =>  dx = dy, dbranch = dy (summed back over broadcast axes)
        return unbroadcast(dy, self.shapes[0]), unbroadcast(dy, self.shapes[1])
