"""The exercises, in the lecture's order, each with its check.

A check runs the learner's functions on float64 inputs of several shapes (a batch of one, square
and non-square matrices, repeated indices, logits large enough to overflow a naive exp), compares
them with minigpt's reference op, names the common mistakes it recognises, and ends with the
project's gradcheck of the learner's backward against the learner's forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import numpy as np

from minigpt import functional as F
from minigpt import optim
from minigpt.exercises.checking import Mistake, call, consistent, same
from minigpt.tensor import Tensor


@dataclass(frozen=True)
class Exercise:
    name: str
    title: str
    check: Callable[[ModuleType], None]
    reference: str  # where to compare: the reference code and its derivation


def _leaves(*arrays: np.ndarray) -> list[Tensor]:
    return [Tensor(a, requires_grad=True) for a in arrays]


def _grads(out: Tensor, dy: np.ndarray, *leaves: Tensor) -> list[np.ndarray]:
    out.backward(dy)
    return [t.grad for t in leaves]


def _tuple_of(got: object, n: int, what: str) -> tuple:
    if not isinstance(got, (tuple, list)) or len(got) != n:
        raise Mistake(f"backward must return a tuple of {n}: {what}")
    return tuple(got)


# ----------------------------------------------------------------------------- linear
def check_linear(m: ModuleType) -> None:
    rng = np.random.default_rng(0)
    for N, d_in, d_out in [(5, 4, 3), (1, 3, 3), (6, 2, 2)]:  # square W: a transposed dW has W's shape
        x, W, b = rng.standard_normal((N, d_in)), rng.standard_normal((d_out, d_in)), rng.standard_normal(d_out)
        same("forward(x, W, b)", call(m, "forward", x, W, b), x @ W.T + b)
        dy = rng.standard_normal((N, d_out))
        tx, tW, tb = _leaves(x, W, b)
        gx, gW, gb = _grads(F.linear(tx, tW, tb), dy, tx, tW, tb)
        dx, dW, db = _tuple_of(call(m, "backward", x, W, b, dy), 3, "(dx, dW, db)")
        same("dx", dx, gx)
        same("dW", dW, gW, known=[("the gradient is transposed: dW has W's shape (out, in), dy.T @ x", gW.T)])
        same("db", db, gb, known=[("the sum over the batch axis is missing: b is added to every row, so "
                                   "db = dy.sum(axis=0)", dy),
                                  ("a mean over the batch instead of the sum", dy.mean(axis=0))])
    consistent(m.forward, m.backward, [x, W, b], grad_of=(0, 1, 2), names=("x", "W", "b"))


# ----------------------------------------------------------------------------- embedding
def check_embedding(m: ModuleType) -> None:
    rng = np.random.default_rng(1)
    for idx in (np.array([0, 2, 2, 4, 0, 2]), np.array([3]), np.array([1, 1, 1])):  # repeats; row 5 unused
        W = rng.standard_normal((6, 3))
        same("forward(idx, W)", call(m, "forward", idx, W), W[idx])
        dout = rng.standard_normal((len(idx), 3))
        (tW,) = _leaves(W)
        (gW,) = _grads(F.embedding(idx, tW), dout, tW)
        assigned = np.zeros_like(W)
        assigned[idx] = dout  # the last repeat wins
        same("dW", call(m, "backward", idx, W, dout), gW,
             known=[("repeated indices lose their gradients: an assignment through an index array (dW[idx] = "
                     "dout, or dW[idx] += dout) writes a repeated token's row once; np.add.at(dW, idx, dout) adds "
                     "every one", assigned)])
    consistent(m.forward, m.backward, [np.array([0, 2, 2, 4]), rng.standard_normal((6, 3))], grad_of=(1,),
               names=("idx", "W"))


# ----------------------------------------------------------------------------- softmax
def _softmax(x: np.ndarray) -> np.ndarray:
    """The reference softmax along the last axis, on an array."""
    return F.softmax(Tensor(x)).data


def _check_no_overflow(m: ModuleType, name: str, args: tuple, expected: np.ndarray) -> None:
    """forward(*args) on logits near 1000 is finite and right."""
    got = np.asarray(call(m, "forward", *args), dtype=float)
    if not np.all(np.isfinite(got)):
        raise Mistake(f"forward gives {got.ravel()[~np.isfinite(got.ravel())][0]} for logits near 1000: the max-shift "
                      f"is left out, and exp overflows; subtract each row's max first (it changes nothing else)")
    same(f"forward on logits near 1000 ({name})", got, expected)


def check_softmax(m: ModuleType) -> None:
    rng = np.random.default_rng(2)
    for shape in [(4, 5), (1, 3), (3, 1)]:
        x = rng.standard_normal(shape)
        (tx,) = _leaves(x)
        y_ref = F.softmax(tx)
        same("forward(x)", call(m, "forward", x), y_ref.data,
             known=[("normalised over the wrong axis: each ROW must sum to 1", np.exp(x) / np.exp(x).sum(0))])
        dy = rng.standard_normal(shape)
        (gx,) = _grads(y_ref, dy, tx)
        y = y_ref.data
        same("backward(y, dy)", call(m, "backward", y, dy), gx,
             known=[("the term -y * sum(y * dy) is missing: each y[i] depends on every x[j], not only on x[i]",
                     y * dy),
                    ("only the diagonal of the Jacobian: the derivative of y[i] by x[j] is y[i] (delta_ij - y[j]) "
                     "for every j, not only j = i", y * (1 - y) * dy)])
    big = rng.standard_normal((3, 4)) + 1000.0
    _check_no_overflow(m, "rows of 1000 + a little", (big,), _softmax(big))
    consistent(m.forward, lambda x, dy: m.backward(m.forward(x), dy), [rng.standard_normal((3, 4))], grad_of=(0,),
               names=("x",))


# ----------------------------------------------------------------------------- cross-entropy
def check_cross_entropy(m: ModuleType) -> None:
    rng = np.random.default_rng(3)
    for N, V in [(6, 5), (1, 4), (8, 2)]:
        logits, targets = rng.standard_normal((N, V)), rng.integers(0, V, N)
        (tl,) = _leaves(logits)
        loss = F.cross_entropy(tl, targets)
        same("forward(logits, targets)", call(m, "forward", logits, targets), loss.data,
             known=[("the sum over the rows, not the mean: divide by N", loss.data * N),
                    ("the sign is flipped: the loss is -log p[target], which is positive", -loss.data)])
        (gl,) = _grads(loss, np.ones(()), tl)
        p = _softmax(logits)
        same("backward(logits, targets)", call(m, "backward", logits, targets), gl,
             known=[("the 1/N of the mean is missing", gl * N),
                     ("the one-hot of the targets is not subtracted: d(-log p[t])/dlogits = p - onehot(t)", p / N),
                     ("the sign is flipped: the gradient is p - onehot(t), not onehot(t) - p", -gl)])
    big, t = rng.standard_normal((3, 4)) * 3 + 1000.0, np.array([0, 3, 1])
    _check_no_overflow(m, "cross-entropy", (big, t), np.asarray(F.cross_entropy(Tensor(big), t).data))
    (tb,) = _leaves(big)
    F.cross_entropy(tb, t).backward()
    got = np.asarray(call(m, "backward", big, t), dtype=float)
    if not np.all(np.isfinite(got)):
        raise Mistake("backward gives inf or NaN for logits near 1000: the max-shift is left out of its softmax")
    same("backward on logits near 1000", got, tb.grad)
    consistent(m.forward, lambda lg, tg, dy: m.backward(lg, tg) * dy, [rng.standard_normal((5, 3)),
               rng.integers(0, 3, 5)], grad_of=(0,), names=("logits", "targets"))


# ----------------------------------------------------------------------------- layer norm
def check_layer_norm(m: ModuleType) -> None:
    rng = np.random.default_rng(4)
    for N, C in [(5, 6), (1, 4), (3, 2)]:
        x, w, b = rng.standard_normal((N, C)) * 2 + 1, rng.standard_normal(C), rng.standard_normal(C)
        tx, tw, tb = _leaves(x, w, b)
        y = F.layer_norm(tx, tw, tb)
        same("forward(x, w, b)", call(m, "forward", x, w, b), y.data)
        dy = rng.standard_normal((N, C))
        gx, gw, gb = _grads(y, dy, tx, tw, tb)
        dx, dw, db = _tuple_of(call(m, "backward", x, w, b, dy), 3, "(dx, dw, db)")
        std = np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        xhat = (x - x.mean(-1, keepdims=True)) / std
        same("dx", dx, gx, known=[("the mean and the variance are taken as constants: every xhat of a row depends "
                                   "on every x of it, through them (each row of dx must sum to 0)", dy * w / std)])
        same("dw", dw, gw, known=[("the sum over the rows is missing: w is used by every row", dy * xhat)])
        same("db", db, gb, known=[("the sum over the rows is missing: b is used by every row", dy)])
    consistent(m.forward, m.backward, [x, w, b], grad_of=(0, 1, 2), names=("x", "w", "b"))


# ----------------------------------------------------------------------------- GELU
def check_gelu(m: ModuleType) -> None:
    rng = np.random.default_rng(5)
    for shape in [(4, 7), (1,), (2, 3, 2)]:
        x = rng.standard_normal(shape) * 3
        (tx,) = _leaves(x)
        y = F.gelu(tx)
        same("forward(x)", call(m, "forward", x), y.data)
        dy = rng.standard_normal(shape)
        (gx,) = _grads(y, dy, tx)
        tanh_u = np.tanh(F.GELU_K * (x + F.GELU_A * x**3))
        same("backward(x, dy)", call(m, "backward", x, dy), gx,
             known=[("the term through tanh is missing: d/dx of 0.5 x (1 + tanh u) has a second term, "
                     "0.5 x (1 - tanh(u)^2) du/dx", 0.5 * (1 + tanh_u) * dy),
                    ("tanh' is 1 - tanh(u)^2, not 1 - tanh(u)",
                     (0.5 * (1 + tanh_u) + 0.5 * x * (1 - tanh_u) * F.GELU_K * (1 + 3 * F.GELU_A * x**2)) * dy)])
    consistent(m.forward, m.backward, [rng.standard_normal((3, 4))], grad_of=(0,), names=("x",))


# ----------------------------------------------------------------------------- AdamW
def check_adamw(m: ModuleType) -> None:
    rng = np.random.default_rng(6)
    lr, beta1, beta2, eps, wd = 0.01, 0.9, 0.99, 1e-8, 0.1
    for t, size in ((1, 1.0), (2, 1.0), (10, 1.0), (3, 1e-8)):  # tiny gradients: where eps matters
        p, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4)) * size
        if t > 1:
            mom, vel = rng.standard_normal((3, 4)) * 0.1 * size, rng.random((3, 4)) * 0.01 * size**2
        else:
            mom, vel = np.zeros((3, 4)), np.zeros((3, 4))
        param = Tensor(p.copy(), requires_grad=True)
        param.grad = g.copy()
        opt = optim.AdamW([param], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd)
        state = opt.init_state(param)
        state.update(step=t - 1, exp_avg=mom.copy(), exp_avg_sq=vel.copy())
        opt.step()
        new_m, new_v = beta1 * mom + (1 - beta1) * g, beta2 * vel + (1 - beta2) * g * g
        got = _tuple_of(call(m, "step", p, g, mom, vel, t, lr, beta1, beta2, eps, wd), 3, "(p, m, v)")
        adam = lambda p0, m_hat, v_hat: p0 - lr * m_hat / (np.sqrt(v_hat) + eps)  # noqa: E731
        corrected = (new_m / (1 - beta1**t), new_v / (1 - beta2**t))
        l2_g = g + wd * p
        l2_m, l2_v = beta1 * mom + (1 - beta1) * l2_g, beta2 * vel + (1 - beta2) * l2_g * l2_g
        known = [("the bias correction is missing: divide m by 1 - beta1^t and v by 1 - beta2^t",
                  adam(p * (1 - lr * wd), new_m, new_v) if t > 1 else None),
                 ("the weight decay goes through the gradient (Adam's L2), not into p directly (AdamW's "
                  "decoupled decay: p <- p (1 - lr wd))", adam(p, l2_m / (1 - beta1**t), l2_v / (1 - beta2**t))),
                 ("the weight decay is not scaled by the learning rate: p <- p (1 - lr wd)",
                  adam(p * (1 - wd), *corrected)),
                 ("eps is added inside the square root: the update divides by sqrt(v_hat) + eps",
                  p * (1 - lr * wd) - lr * corrected[0] / np.sqrt(corrected[1] + eps))]
        right = np.shape(got[0]) == param.shape and np.allclose(got[0], param.data, rtol=1e-6, atol=1e-12)
        named = None if right else next((name for name, wrong in known if wrong is not None
                                         and np.shape(got[0]) == wrong.shape
                                         and np.allclose(got[0], wrong, rtol=1e-6, atol=1e-12)), None)
        if named:  # a known mistake in p's update changes m and v too (the L2 one): name it first
            raise Mistake(f"the new p (step t={t}) is wrong: {named}")
        same("the new m", got[1], state["exp_avg"])
        same("the new v", got[2], state["exp_avg_sq"])
        same(f"the new p (step t={t})", got[0], param.data, known=known, atol=1e-12)


# ----------------------------------------------------------------------------- one head of attention
def check_attention(m: ModuleType) -> None:
    rng = np.random.default_rng(7)
    for T, hs in [(5, 4), (1, 3), (4, 2)]:
        q, k, v = (rng.standard_normal((T, hs)) for _ in range(3))
        tq, tk, tv = _leaves(q[None, None], k[None, None], v[None, None])  # (1, 1, T, hs): one batch, one head
        y = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        scale, causal = 1 / np.sqrt(hs), np.tril(np.ones((T, T), dtype=bool))
        scores = q @ k.T * scale
        full = _softmax(scores)  # softmax with no mask
        unscaled = _softmax(np.where(causal, q @ k.T, -np.inf))
        same("forward(q, k, v)", call(m, "forward", q, k, v), y.data[0, 0],
             known=[("the mask is applied after the softmax: mask the scores (to -inf) before it, so that each "
                     "row's weights over the past sum to 1", (full * causal) @ v),
                    ("no causal mask: position i reads the future; set scores[i, j] = -inf for j > i", full @ v),
                    ("the 1/sqrt(hs) scale is missing", unscaled @ v)])
        dy = rng.standard_normal((T, hs))
        gq, gk, gv = (g[0, 0] for g in _grads(y, dy[None, None], tq, tk, tv))
        att = F.attention_weights(q, k, is_causal=True, scale=scale)
        datt = dy @ v.T
        leaky = full * (datt - (full * datt).sum(1, keepdims=True)) * scale  # softmax backward without the mask
        dq, dk, dv = _tuple_of(call(m, "backward", q, k, v, dy), 3, "(dq, dk, dv)")
        same("dv", dv, gv, known=[("dv = att @ dy: y = att @ v, so dv = att.T @ dy", att @ dy)])
        same("dq", dq, gq, known=[("gradient flows into the masked positions: the future scores are constants, "
                                   "use the masked att in softmax's backward", leaky @ k),
                                  ("the 1/sqrt(hs) scale is missing from dq", gq / scale)])
        same("dk", dk, gk, known=[("the 1/sqrt(hs) scale is missing from dk", gk / scale)])
    consistent(m.forward, m.backward, [q, k, v], grad_of=(0, 1, 2), names=("q", "k", "v"))


# ----------------------------------------------------------------------------- bigram counts
def check_bigram(m: ModuleType) -> None:
    rng = np.random.default_rng(8)
    for V, N in [(5, 40), (3, 2), (7, 200)]:
        ids = rng.integers(0, V, N)
        counts = np.zeros((V, V))
        np.add.at(counts, (ids[:-1], ids[1:]), 1)
        P = (counts + 1) / (counts + 1).sum(1, keepdims=True)
        bare = counts / np.maximum(counts.sum(1, keepdims=True), 1)
        same("probabilities(ids, V)", call(m, "probabilities", ids, V), P,
             known=[("each column sums to 1, not each row: P[i] is the distribution of what follows token i",
                     (counts + 1) / (counts + 1).sum(0, keepdims=True)),
                    ("the +1 is missing: a pair never seen gets probability 0, and its log -inf", bare),
                    ("not normalised: divide each row of counts by its sum", counts + 1)])
        expected = -np.log(P[ids[:-1], ids[1:]]).mean()
        same("nll(P, ids)", call(m, "nll", P, ids), np.asarray(expected),
             known=[("the sum, not the mean: divide by the number of pairs", expected * (N - 1)),
                    ("the sign is flipped: the loss is -log P, which is positive", -expected)])


# ----------------------------------------------------------------------------- averaging
def check_averaging(m: ModuleType) -> None:
    rng = np.random.default_rng(9)
    for B, T, C in [(2, 5, 3), (1, 1, 2), (3, 4, 1)]:
        x = rng.standard_normal((B, T, C))
        expected = np.cumsum(x, axis=1) / np.arange(1, T + 1)[:, None]
        everything = np.broadcast_to(x.mean(1, keepdims=True), x.shape)
        summed = np.cumsum(x, axis=1)
        after = (np.tril(np.ones((T, T))) / T) @ x  # uniform weights over all T, then the future zeroed
        for name in ("with_matmul", "with_softmax"):
            same(f"{name}(x)", call(m, name, x), expected,
                 known=[("the future is included: the weights must be 0 above the diagonal (j > t)", everything),
                        ("the sum, not the mean: each row of weights must sum to 1", summed),
                        ("the mask is applied after the softmax: set the future's scores to -inf before it, so "
                         "that each row's weights sum to 1", after if T > 1 else None)])


# ----------------------------------------------------------------------------- a gradient check
def check_numerical_gradient(m: ModuleType) -> None:
    rng = np.random.default_rng(10)
    for shape in [(5,), (3, 4), (1, 1)]:
        w = rng.standard_normal(shape)
        f = lambda x, w=w: float(np.sum(w * np.tanh(x) + 0.5 * x**3))  # noqa: E731
        x = rng.standard_normal(shape)
        exact = w * (1 - np.tanh(x) ** 2) + 1.5 * x**2
        h = 1e-6
        one_sided = np.zeros(shape)
        for i in np.ndindex(shape):
            xp = x.copy()
            xp[i] += h
            one_sided[i] = (f(xp) - f(x)) / h
        same(f"numerical_gradient(f, x) for x of shape {shape}", call(m, "numerical_gradient", f, x, h), exact,
             rtol=1e-7, atol=1e-8,
             known=[("a one-sided difference: (f(x + h) - f(x)) / h errs by about h f''; use (f(x + h) - f(x - h)) / 2h",
                     one_sided),
                    ("divided by h instead of 2h: the central difference spans 2h", 2 * exact),
                    ("divided by 2h twice as far: the step is x ± h, not x ± 2h", exact / 2)])


# ----------------------------------------------------------------------------- multi-head attention
def _heads(a: np.ndarray, nh: int) -> np.ndarray:
    T, C = a.shape
    return a.reshape(T, nh, C // nh).transpose(1, 0, 2)[None]  # (T, C) -> (1, nh, T, hs)


def _merge(y: np.ndarray) -> np.ndarray:
    _, nh, T, hs = y.shape
    return y[0].transpose(1, 0, 2).reshape(T, nh * hs)  # (1, nh, T, hs) -> (T, C)


def check_multihead(m: ModuleType) -> None:
    rng = np.random.default_rng(11)
    for T, nh, hs in [(5, 2, 3), (1, 3, 2), (4, 1, 4)]:
        q, k, v = (rng.standard_normal((T, nh * hs)) for _ in range(3))
        tq, tk, tv = _leaves(_heads(q, nh), _heads(k, nh), _heads(v, nh))
        y = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        rows = lambda a: a.reshape(nh, T, hs)[None]  # noqa: E731 - the split that mixes positions
        by_rows = F.scaled_dot_product_attention(Tensor(rows(q)), Tensor(rows(k)), Tensor(rows(v))).data
        whole_c = F.scaled_dot_product_attention(Tensor(_heads(q, nh)), Tensor(_heads(k, nh)), Tensor(_heads(v, nh)),
                                                 scale=1 / np.sqrt(nh * hs)).data
        same("forward(q, k, v, n_head)", call(m, "forward", q, k, v, nh), _merge(y.data),
             known=[("the heads are split by rows (reshape (T, C) -> (nh, T, hs)), which mixes positions: split the "
                     "columns, reshape to (T, nh, hs) then transpose to (nh, T, hs)",
                     by_rows[0].reshape(T, nh * hs) if nh > 1 else None),
                    ("the scale uses C: it is 1/sqrt(hs), the head size", _merge(whole_c) if nh > 1 else None)])
        dy = rng.standard_normal((T, nh * hs))
        gq, gk, gv = (_merge(g) for g in _grads(y, _heads(dy, nh), tq, tk, tv))
        dq, dk, dv = _tuple_of(call(m, "backward", q, k, v, nh, dy), 3, "(dq, dk, dv)")
        same("dq", dq, gq)
        same("dk", dk, gk)
        same("dv", dv, gv)
    consistent(lambda q, k, v: m.forward(q, k, v, 2), lambda q, k, v, dy: m.backward(q, k, v, 2, dy),
               [rng.standard_normal((4, 6)) for _ in range(3)], grad_of=(0, 1, 2), names=("q", "k", "v"))


TRACK: dict[str, Exercise] = {e.name: e for e in [
    Exercise("bigram", "a bigram model by counting, and its negative log-likelihood", check_bigram,
             "docs/walkthrough.md, the bigram step, and minigpt/nn/bigram.py"),
    Exercise("averaging", "the averaging trick: a lower-triangular matmul, then a masked softmax", check_averaging,
             "docs/walkthrough.md, the averaging step, and minigpt/functional.py (attention_weights)"),
    Exercise("linear", "the backward pass of a linear layer", check_linear,
             "minigpt/functional.py (class Linear) and docs/derivations.md, section 'Linear'"),
    Exercise("embedding", "the backward pass of an embedding: a scatter-add", check_embedding,
             "minigpt/functional.py (class Embedding) and docs/derivations.md, section 'Embedding'"),
    Exercise("softmax", "softmax, forward without overflow and backward", check_softmax,
             "minigpt/functional.py (softmax_forward, softmax_backward) and docs/derivations.md, section 'Softmax'"),
    Exercise("cross_entropy", "cross-entropy fused with log-softmax, forward and backward", check_cross_entropy,
             "minigpt/functional.py (class CrossEntropy) and docs/derivations.md, section 'Log-softmax and cross-entropy'"),
    Exercise("layer_norm", "the backward pass of layer norm, through the mean and the variance", check_layer_norm,
             "minigpt/functional.py (class LayerNorm) and docs/derivations.md, section 'Layer norm'"),
    Exercise("gelu", "the backward pass of GELU (tanh form)", check_gelu,
             "minigpt/functional.py (class GELU) and docs/derivations.md, section 'GELU (tanh form, as GPT-2)'"),
    Exercise("attention", "one head of causal self-attention, forward and backward", check_attention,
             "minigpt/functional.py (class ScaledDotProductAttention) and docs/derivations.md, section "
             "'Causal self-attention'"),
    Exercise("multihead", "multi-head causal self-attention: heads side by side", check_multihead,
             "minigpt/nn/gpt.py (CausalSelfAttention) and docs/derivations.md, section 'Causal self-attention'"),
    Exercise("adamw", "one AdamW step: moments, bias correction, decoupled weight decay", check_adamw,
             "minigpt/optim.py (AdamW.update_group) and docs/derivations.md, section 'AdamW (the update, not a gradient)'"),
    Exercise("numerical_gradient", "the numerical gradient of a gradient check, by central differences",
             check_numerical_gradient, "minigpt/gradcheck.py (gradcheck) and docs/testing.md"),
    Exercise("fix_softmax", "find the bug: a softmax with one mistake", check_softmax,
             "minigpt/functional.py (softmax_backward) and docs/derivations.md, section 'Softmax'"),
    Exercise("fix_cross_entropy", "find the bug: a cross-entropy with one mistake", check_cross_entropy,
             "minigpt/functional.py (class CrossEntropy) and docs/derivations.md, section "
             "'Log-softmax and cross-entropy'"),
    Exercise("fix_layer_norm", "find the bug: a layer norm backward with one mistake", check_layer_norm,
             "minigpt/functional.py (class LayerNorm) and docs/derivations.md, section 'Layer norm'"),
]}
