"""Every op in minigpt.functional: a hypothesis gradient check, plus the invariants it must keep."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import minigpt
from minigpt import Tensor, gradcheck
from minigpt import functional as F
from tests.strategies import array_from, arrays, attention_shapes, rng_from, seeds, shapes


def leaf(x, device="cpu"):
    return Tensor(np.array(x, dtype=np.float64), requires_grad=True, device=device)


axes = st.sampled_from([-1, 0])


# ----------------------------------------------------------------------------- gradient checks
def numpy_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def numpy_attention(q, k, v, is_causal):
    """softmax(q kᵀ / sqrt(hs)) v in plain NumPy; causal as torch's is_causal: query i sees keys j <= i."""
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    if is_causal:
        scores = np.where(np.tril(np.ones((T, S), bool)), scores, -np.inf)
    return numpy_softmax(scores) @ v


@given(data=st.data())
def test_embedding_gradient(data):
    V, C = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    idx = rng_from(data.draw(seeds)).integers(0, V, size=data.draw(shapes(1, 2, max_side=5)))
    idx.reshape(-1)[-1] = idx.reshape(-1)[0]  # a repeated row (when there are two indices or more)
    w = data.draw(arrays((V, C)))
    np.testing.assert_array_equal(F.embedding(idx, Tensor(w)).data, w[idx])
    t = leaf(w)
    dy = data.draw(arrays(idx.shape + (C,)))
    F.embedding(idx, t).backward(dy)
    expected = np.zeros_like(w)
    np.add.at(expected, idx, dy)  # each use of a row adds its upstream gradient
    np.testing.assert_allclose(t.grad, expected, rtol=1e-12, atol=1e-15)
    assert gradcheck(lambda t: F.embedding(idx, t), [leaf(w)])


@given(data=st.data(), with_bias=st.booleans())
def test_linear_gradient(data, with_bias):
    lead = data.draw(shapes(1, 2))
    n_in, n_out = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x, w, b = data.draw(arrays(lead + (n_in,))), data.draw(arrays((n_out, n_in))), data.draw(arrays((n_out,)))
    ins = [leaf(x), leaf(w)] + ([leaf(b)] if with_bias else [])
    assert gradcheck(lambda *t: F.linear(*t), ins)
    expected = x @ w.T + (b if with_bias else 0)
    np.testing.assert_allclose(F.linear(*[Tensor(i.data) for i in ins]).data, expected, rtol=1e-12)


@given(x=arrays(), axis=axes)
@example(x=np.array([[0.3], [-1.2]]), axis=-1)  # C = 1: every probability is 1, every gradient 0
@example(x=np.array([0.3, -1.2, 2.0]), axis=0)
def test_softmax_gradient(x, axis):
    np.testing.assert_allclose(F.softmax(Tensor(x), axis=axis).data, numpy_softmax(x, axis), rtol=1e-12)
    assert gradcheck(lambda t: F.softmax(t, axis=axis), [leaf(x)])


@given(x=arrays(), axis=axes)
@example(x=np.array([[0.3], [-1.2]]), axis=-1)  # C = 1: every log-probability is 0
def test_log_softmax_gradient(x, axis):
    m = x.max(axis=axis, keepdims=True)
    expected = x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    np.testing.assert_allclose(F.log_softmax(Tensor(x), axis=axis).data, expected, rtol=1e-12, atol=1e-15)
    assert gradcheck(lambda t: F.log_softmax(t, axis=axis), [leaf(x)])


@given(data=st.data(), three_d=st.booleans(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_cross_entropy_gradient_with_ignore_index(data, three_d, reduction):
    V = data.draw(st.integers(1, 5))  # V = 1: the loss is 0 and so is the gradient
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))) if three_d else (data.draw(st.integers(1, 5)),)
    rng = rng_from(data.draw(seeds))
    targets = rng.integers(0, V, size=shape)
    targets[rng.random(shape) < 0.3] = -100
    if (targets == -100).all():
        targets.reshape(-1)[0] = 0
    logits = data.draw(arrays(shape + (V,)))
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    counted = targets != -100
    nll = np.where(counted, -np.take_along_axis(logp, np.where(counted, targets, 0)[..., None], -1)[..., 0], 0.0)
    expected = {"none": nll, "sum": nll.sum(), "mean": nll.sum() / counted.sum()}[reduction]
    got = F.cross_entropy(Tensor(logits), targets, reduction=reduction).data
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert gradcheck(lambda t: F.cross_entropy(t, targets, reduction=reduction), [leaf(logits)])


@given(data=st.data(), affine=st.sampled_from(["none", "weight", "both"]))
def test_layer_norm_gradient(data, affine):
    shape = data.draw(shapes(1, 3))  # C = 1 included: x - mean is 0, so the output is the bias
    x = data.draw(arrays(shape))
    ins = [leaf(x)]
    if affine != "none":
        ins.append(leaf(data.draw(arrays(shape[-1:]))))
    if affine == "both":
        ins.append(leaf(data.draw(arrays(shape[-1:]))))
    w = ins[1].data if len(ins) > 1 else 1.0
    b = ins[2].data if len(ins) > 2 else 0.0
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(F.layer_norm(*[Tensor(i.data) for i in ins]).data,
                               (x - mu) / np.sqrt(var + 1e-5) * w + b, rtol=1e-10, atol=1e-12)
    assert gradcheck(lambda *t: F.layer_norm(*t), ins)


@given(x=arrays())
def test_gelu_gradient(x):
    assert gradcheck(F.gelu, [leaf(x * 2)])


@given(x=arrays(), p=st.sampled_from([0.1, 0.5, 0.9]), seed=seeds)
def test_dropout_gradient(x, p, seed):
    def fn(t):
        minigpt.manual_seed(seed)  # the same mask at every evaluation
        return F.dropout(t, p=p, training=True)

    assert gradcheck(fn, [leaf(x)])


@st.composite
def qkv(draw):
    """q (B, nh, T, hs), k and v (*, S, hs) with T != S, hs = 1 and broadcast batch axes among them."""
    return [draw(arrays(shape)) for shape in draw(attention_shapes())]


@given(qkv=qkv(), causal=st.booleans())
@example(qkv=[array_from(s, i) for i, s in enumerate([(2, 2, 3, 1), (2, 2, 5, 1), (2, 2, 5, 1)])], causal=True)
@example(qkv=[array_from(s, i) for i, s in enumerate([(2, 2, 4, 3), (2, 2, 2, 3), (2, 2, 2, 3)])], causal=True)
@example(qkv=[array_from(s, i) for i, s in enumerate([(2, 3, 4, 2), (1, 3, 5, 2), (3, 5, 2)])], causal=False)
def test_attention_gradient(qkv, causal):
    q, k, v = qkv
    np.testing.assert_allclose(F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), is_causal=causal).data,
                               numpy_attention(q, k, v, causal), rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                     [leaf(a) for a in qkv])


@given(qkv=qkv(), seed=seeds)
def test_attention_with_dropout_gradient(qkv, seed):
    def fn(q, k, v):
        minigpt.manual_seed(seed)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)

    assert gradcheck(fn, [leaf(a) for a in qkv])


# ----------------------------------------------------------------------------- forward values from the math
@pytest.mark.parametrize("T", [5, 40])
def test_attention_equals_the_masked_softmax_formula(T):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 3, T, 4)) for _ in range(3))
    att = q @ k.swapaxes(-1, -2) / math.sqrt(4)
    att = np.where(np.tril(np.ones((T, T), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v))
    np.testing.assert_allclose(out.data, att @ v, rtol=1e-12)


def test_layer_norm_and_gelu_and_cross_entropy_values():
    rng = np.random.default_rng(1)
    x, w, b = rng.standard_normal((3, 6)), rng.standard_normal(6), rng.standard_normal(6)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(F.layer_norm(Tensor(x), Tensor(w), Tensor(b)).data,
                               (x - mu) / np.sqrt(var + 1e-5) * w + b, rtol=1e-10)
    g = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(F.gelu(Tensor(x)).data, g, rtol=1e-12)
    t = np.array([0, 5, -100])
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    np.testing.assert_allclose(F.cross_entropy(Tensor(x), t).item(), -(logp[0, 0] + logp[1, 5]) / 2, rtol=1e-12)


def test_cross_entropy_accepts_b_t_v_and_matches_flattened():
    rng = np.random.default_rng(2)
    logits, targets = rng.standard_normal((2, 3, 7)), rng.integers(0, 7, (2, 3))
    a = F.cross_entropy(Tensor(logits), targets).item()
    b = F.cross_entropy(Tensor(logits.reshape(6, 7)), targets.reshape(6)).item()
    assert a == pytest.approx(b, rel=1e-12)


def test_cross_entropy_all_ignored_is_nan_and_bad_targets_raise():
    assert math.isnan(F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([-100, -100])).item())
    with pytest.raises(IndexError):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 3]))
    with pytest.raises(ValueError):
        F.cross_entropy(Tensor(np.zeros((2, 3))), np.array([0, 1, 2]))


# ----------------------------------------------------------------------------- stability
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("impl", [F, minigpt.fast], ids=["reference", "fast"])
def test_softmax_and_cross_entropy_finite_for_huge_logits(dtype, impl):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [1e4, 1e4, 1e4]], dtype=dtype)
    x = Tensor(z, requires_grad=True)
    p = impl.softmax(x)
    assert np.isfinite(p.data).all()
    np.testing.assert_allclose(p.data, [[1, 0, 0], [0, 0.5, 0.5], [1 / 3] * 3], atol=1e-6)
    ls = impl.log_softmax(Tensor(z))
    assert np.isfinite(ls.data).all()
    # the very unlikely targets; by hand, with exp(-1e4) = 0 in every float format:
    #   row 0: logsumexp = 1e4,           minus z[1] = -1e4  ->  2e4
    #   row 1: logsumexp = 1e4 + log 2,   minus z[0] = -1e4  ->  2e4 + log 2
    #   row 2: logsumexp = 1e4 + log 3,   minus z[2] =  1e4  ->  log 3
    # float32 keeps ~7 digits of 13334 (rtol 1e-6 is 0.013, well under the log 2 / 3 it must not lose);
    # row 2 is log 3 itself: log-softmax takes (z - max) - log sum, never the rounded max + log sum
    rel = 1e-6 if dtype == np.float32 else 1e-12
    per_row = impl.cross_entropy(Tensor(z), np.array([1, 0, 2]), reduction="none").data
    np.testing.assert_allclose(per_row, [2e4, 2e4 + math.log(2), math.log(3)], rtol=rel, atol=0)
    loss = impl.cross_entropy(x, np.array([1, 0, 2]))
    assert loss.item() == pytest.approx((4e4 + math.log(2) + math.log(3)) / 3, rel=rel)
    loss.backward()
    # dz = (softmax(z) - onehot(target)) / 3
    expected = np.array([[1, -1, 0], [-1, 0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(x.grad, expected, rtol=rel, atol=1e-15)


# ----------------------------------------------------------------------------- non-finite values
# the reference ops and their fast twins (minigpt.fast) must both handle these
IMPLS = pytest.mark.parametrize("impl", [F, minigpt.fast], ids=["reference", "fast"])


@IMPLS
@given(x=arrays(shapes(2, 3, min_side=2)), data=st.data())
def test_softmax_gives_a_minus_inf_entry_zero_probability_and_zero_gradient(impl, x, data):
    """A -inf score (a masked position) gets probability exactly 0 and gradient exactly 0; the rest
    of its row is the softmax of the row without it."""
    rng = rng_from(data.draw(seeds))
    masked = rng.random(x.shape) < 0.4
    masked[..., 0] = False  # each row keeps a finite entry
    z = np.where(masked, -np.inf, x)
    t = leaf(z)
    y = impl.softmax(t)
    assert (y.data[masked] == 0).all()
    e = np.where(masked, 0.0, np.exp(x - x.max(-1, keepdims=True)))  # softmax over the unmasked entries
    p = e / e.sum(-1, keepdims=True)
    np.testing.assert_allclose(y.data, p, rtol=1e-12, atol=1e-300)
    dy = data.draw(arrays(x.shape))
    y.backward(dy)
    assert (t.grad[masked] == 0).all()
    np.testing.assert_allclose(t.grad, p * (dy - (p * dy).sum(-1, keepdims=True)), rtol=1e-10, atol=1e-12)


IGNORED_ROWS = {"-inf": [-np.inf, 0.0, 0.0], "nan": [np.nan, 0.0, 1.0], "all -inf": [-np.inf] * 3,
                "+inf": [np.inf, 0.0, 0.0]}


@IMPLS
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bad", sorted(IGNORED_ROWS))
def test_cross_entropy_ignored_row_with_non_finite_logits_changes_nothing(bad, reduction, impl):
    kept = np.array([[0.0, 1.0, 2.0], [0.5, -1.0, 0.25]])
    x = leaf(np.vstack([kept[:1], [IGNORED_ROWS[bad]], kept[1:]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the ignored row either
        loss = impl.cross_entropy(x, np.array([2, -100, 0]), reduction=reduction)
        loss.backward(np.ones(loss.shape))
    ref = leaf(kept)
    ref_loss = impl.cross_entropy(ref, np.array([2, 0]), reduction=reduction)
    ref_loss.backward(np.ones(ref_loss.shape))
    if reduction == "none":
        np.testing.assert_array_equal(loss.data[[0, 2]], ref_loss.data)
        assert loss.data[1] == 0.0
    else:
        assert loss.item() == ref_loss.item()
    np.testing.assert_array_equal(x.grad[[0, 2]], ref.grad)
    np.testing.assert_array_equal(x.grad[1], 0.0)


@IMPLS
def test_cross_entropy_ignored_minus_inf_row_matches_torch(impl):
    """torch.nn.functional.cross_entropy gives 0.4076 here: the one counted row, log(1 + e + e²) - 2."""
    loss = impl.cross_entropy(Tensor(np.array([[0.0, 1.0, 2.0], [-np.inf, 0.0, 0.0]])), np.array([2, -100]))
    assert loss.item() == pytest.approx(math.log(1 + math.e + math.e**2) - 2, rel=1e-12)
    assert loss.item() == pytest.approx(0.4076, abs=5e-5)


# ----------------------------------------------------------------------------- invariants
@given(x=arrays(shapes(1, 3)), axis=axes)
def test_softmax_rows_sum_to_one(x, axis):
    p = F.softmax(Tensor(x * 10), axis=axis).data
    np.testing.assert_allclose(p.sum(axis=axis), 1.0, rtol=1e-12)
    assert (p >= 0).all()


@given(x=arrays(shapes(1, 3, min_side=2)), data=st.data())
def test_layer_norm_input_gradient_sums_to_zero_over_channels(x, data):
    w = data.draw(arrays(x.shape[-1:]))
    t = leaf(x)
    out = F.layer_norm(t, Tensor(w), Tensor(w))
    out.backward(data.draw(arrays(x.shape)))
    np.testing.assert_allclose(t.grad.sum(axis=-1), 0.0, atol=1e-10)


@given(x=arrays(), p=st.sampled_from([0.0, 0.3, 0.9]))
def test_dropout_is_the_identity_in_eval_mode(x, p):
    t = Tensor(x)
    assert F.dropout(t, p=p, training=False) is t
    layer = minigpt.nn.Dropout(p).eval()
    np.testing.assert_array_equal(layer(t).data, x)


def test_dropout_keeps_the_expectation_and_drops_about_p():
    x = Tensor(np.ones((200, 500), dtype=np.float32))
    y = F.dropout(x, p=0.25).data
    assert y.dtype == np.float32
    assert abs((y == 0).mean() - 0.25) < 0.01
    np.testing.assert_allclose(y[y != 0], 1 / 0.75, rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.02
    with pytest.raises(ValueError):
        F.dropout(x, p=1.5)
    np.testing.assert_array_equal(F.dropout(x, p=1.0).data, 0.0)


def test_dropout_follows_manual_seed():
    x = Tensor(np.ones(1000))
    minigpt.manual_seed(7)
    a = F.dropout(x, 0.5).data
    minigpt.manual_seed(7)
    b = F.dropout(x, 0.5).data
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, F.dropout(x, 0.5).data)


@given(qkv=qkv(), data=st.data())
def test_causal_attention_never_looks_ahead(qkv, data):
    q, k, v = qkv
    T = q.shape[2]
    t = data.draw(st.integers(0, T - 1))  # positions <= t must not see positions > t (queries and keys)
    out = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v)).data
    q2, k2, v2 = (a.copy() for a in qkv)
    for a in (q2, k2, v2):
        a[..., t + 1:, :] = data.draw(arrays(a[..., t + 1:, :].shape)) * 100
    out2 = F.scaled_dot_product_attention(Tensor(q2), Tensor(k2), Tensor(v2)).data
    np.testing.assert_array_equal(out[:, :, : t + 1], out2[:, :, : t + 1])

    # gradient flowing from outputs <= t into positions > t is exactly zero
    ins = [leaf(a) for a in qkv]
    y = F.scaled_dot_product_attention(*ins)
    dy = np.zeros(y.shape)
    dy[:, :, : t + 1] = data.draw(arrays(dy[:, :, : t + 1].shape))
    y.backward(dy)
    for a in ins:
        assert (a.grad[..., t + 1:, :] == 0).all()


def test_ops_keep_float32():
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 4, 8)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((8, 8)).astype(np.float32), requires_grad=True)
    ln_w = Tensor(np.ones(8, np.float32), requires_grad=True)
    h = F.gelu(F.layer_norm(F.linear(x, w), ln_w))
    q = h.reshape(2, 4, 2, 4).transpose(0, 2, 1, 3)
    a = F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    loss = F.cross_entropy(F.log_softmax(a.transpose(0, 2, 1, 3).reshape(2, 4, 8)), np.zeros((2, 4), np.int64))
    assert loss.dtype == np.float32
    loss.backward()
    for p in (x, w, ln_w):
        assert p.grad.dtype == np.float32


# ----------------------------------------------------------------------------- devices
OPS = {
    "linear": (lambda x, w: F.linear(x, w), [(3, 4), (5, 4)]),
    "softmax": (lambda x: F.softmax(x), [(3, 5)]),
    "log_softmax": (lambda x: F.log_softmax(x), [(3, 5)]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, w, b), [(3, 5), (5,), (5,)]),
    "gelu": (lambda x: F.gelu(x), [(3, 5)]),
    "attention": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v), [(1, 2, 4, 3)] * 3),
    "cross_entropy": (lambda x: F.cross_entropy(x, np.array([0, 2, -100])), [(3, 5)]),
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_on_the_gpu_matches_the_cpu_in_float64(name, gpu_device):
    device = gpu_device
    fn, in_shapes = OPS[name]
    rng = np.random.default_rng(3)
    values = [rng.standard_normal(s) for s in in_shapes]
    results = {}
    for dev in ("cpu", device):
        ins = [leaf(v, dev) for v in values]
        out = fn(*ins)
        dy = np.random.default_rng(4).standard_normal(out.shape)
        out.backward(minigpt.backend.move(dy, dev))
        results[dev] = [out.numpy()] + [i.numpy() for i in ins] + [minigpt.backend.to_numpy(i.grad) for i in ins]
    for got, expected in zip(results[device], results["cpu"]):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
