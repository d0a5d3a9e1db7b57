"""The engine at its edges: each test here pins a defect an independent review found (issue 14),
with the expected value from the math or from PyTorch's documented behaviour, never from minigpt.

- matmul of 1-D operands and batch axes broadcast on both sides, forward and backward;
- cross-entropy rows whose target is ignored hold inf or NaN: they touch neither loss nor gradient;
- in-place paths (fast GELU, the residual add) never write over an array something else needs;
- softmax's unshifted fast path is as accurate as the max-shifted one, and quiet;
- the smaller differences from PyTorch: d(x**0)/dx, an inf in the embedding's upstream gradient,
  a float32 tensor with a NumPy float64 scalar, AdamW over mixed dtypes, attention whose k and v
  broadcast, a Tensor made on the CPU from a device array.
"""

import math
import sys
import types
import warnings
from unittest import mock

import numpy as np
import pytest

from minigpt import Tensor, fast, gradcheck, nn, ops, optim
from minigpt import functional as F
from minigpt.fast import attention as fast_attention
from minigpt.fast import functional as fast_functional

REFERENCE_AND_FAST = [pytest.param(F, id="reference"), pytest.param(fast, id="fast")]


def leaf(shape, seed=0, dtype=np.float64):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype), requires_grad=True)


@pytest.fixture
def no_warnings():
    """Every warning (NumPy's "overflow encountered", "invalid value") is an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ----------------------------------------------------------------------------- matmul
MATMUL_SHAPES = [((3,), (3,)), ((2, 3), (3,)), ((3,), (3, 2)), ((3,), (4, 3, 2)), ((4, 2, 3), (3,)),
                 ((2, 1, 3, 4), (5, 4, 2)), ((3, 4), (2, 4, 5)), ((5, 3, 4), (4, 2)), ((1, 2, 3), (4, 3, 2))]


@pytest.mark.parametrize("sa, sb", MATMUL_SHAPES)
def test_matmul_follows_numpy_matmul_forward_and_backward(sa, sb):
    a, b = leaf(sa, 1), leaf(sb, 2)
    np.testing.assert_allclose((a @ b).data, np.matmul(a.data, b.data), rtol=1e-13)
    assert gradcheck(lambda x, y: x @ y, [a, b])


def test_vector_dot_vector_gradients_are_the_other_vector():
    u, v = leaf((4,), 1), leaf((4,), 2)
    y = u @ v  # 0-d
    assert y.shape == ()
    y.backward()
    np.testing.assert_array_equal(u.grad, v.data)  # d(u·v)/du = v
    np.testing.assert_array_equal(v.grad, u.data)


# ----------------------------------------------------------------------------- cross-entropy
TORCH_LOSS = math.log(1 + math.exp(-1) + math.exp(-2))  # -log softmax([0, 1, 2])[2] = 0.4076 (torch)


@pytest.mark.parametrize("mod", REFERENCE_AND_FAST)
@pytest.mark.parametrize("row", [[-math.inf, 0, 0], [-math.inf] * 3, [math.nan, 0, 0], [math.inf, 0, 1],
                                 [math.nan] * 3], ids=["-inf", "all -inf", "nan", "+inf", "all nan"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_an_ignored_row_touches_neither_loss_nor_gradient(mod, row, reduction, no_warnings):
    logits = Tensor(np.array([[0.0, 1.0, 2.0], row]), requires_grad=True)
    loss = mod.cross_entropy(logits, np.array([2, -100]), reduction=reduction)
    expected = [TORCH_LOSS, 0.0] if reduction == "none" else TORCH_LOSS
    np.testing.assert_allclose(loss.data, expected, rtol=1e-14)
    loss.backward(np.ones(loss.shape))
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    np.testing.assert_allclose(logits.grad, [p - [0, 0, 1], [0, 0, 0]], rtol=1e-14, atol=0)


# ----------------------------------------------------------------------------- in-place paths
# Producers whose output something keeps: exp, tanh and softmax save it for backward, max and
# division save it too, log-softmax saves it, a layer norm without weight or bias returns its
# saved xhat, views share a leaf's (or another tensor's) array.
SAVED_OUTPUTS = {
    "exp": lambda t: t.exp(),
    "tanh": lambda t: t.tanh(),
    "softmax": lambda t: F.softmax(t),
    "fast softmax": lambda t: fast.softmax(t),
    "log_softmax": lambda t: F.log_softmax(t),
    "division": lambda t: 1.0 / (t * t + 1.0),
    "max": lambda t: t.reshape(2, 3, 1).max(axis=-1),  # over a size-1 axis: (2, 3), saved
    "bare layer norm": lambda t: F.layer_norm(t),
    "reshape": lambda t: t.reshape(3, 2).reshape(2, 3),
    "read twice": lambda t: (t * 1.0).tanh() * 0.0 + t * 1.0,
}


def _reference_gradient(fn, b, dy):
    b.grad = None
    fn(b).backward(dy)
    return b.grad


@pytest.mark.parametrize("name", list(SAVED_OUTPUTS))
def test_residual_add_and_gelu_never_write_over_a_saved_output(name):
    produce = SAVED_OUTPUTS[name]
    b = leaf((2, 3), 3)
    x = Tensor(np.ones((2, 3)))
    dy = np.random.default_rng(4).standard_normal((2, 3))
    for in_place, plain in [(lambda t: fast.residual_add(x, produce(t)), lambda t: x + produce(t)),
                            (lambda t: fast.gelu_(produce(t)), lambda t: F.gelu(produce(t))),
                            (lambda t: fast_functional.GELU.apply(produce(t), inplace=True),
                             lambda t: F.gelu(produce(t)))]:
        np.testing.assert_allclose(_reference_gradient(in_place, b, dy), _reference_gradient(plain, b, dy),
                                   rtol=1e-12, atol=1e-14)


def test_a_tensor_another_op_saved_is_not_written_over():
    w = leaf((3, 3), 5)
    h = w * 2.0  # a fresh output ...
    z = h * h  # ... that Mul saves
    y = fast.gelu_(h)
    assert not np.shares_memory(y.data, h.data)
    (z.sum() + y.sum()).backward()
    np.testing.assert_allclose(w.grad, 8 * w.data + 2 * _gelu_derivative(2 * w.data), rtol=1e-12)


def _gelu_derivative(x):
    k, a = math.sqrt(2 / math.pi), 0.044715
    t = np.tanh(k * (x + a * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * a * x * x)


@pytest.mark.parametrize("view", [lambda w: w.transpose(), lambda w: w.reshape(3, 2), lambda w: w[:, :],
                                  lambda w: w.detach(), lambda w: w.to(dtype=np.float64), lambda w: w],
                         ids=["transpose", "reshape", "slice", "detach", "to (same dtype)", "the leaf"])
def test_a_leaf_and_its_views_are_never_written_over(view):
    w = leaf((2, 3), 6)
    before = w.data.copy()
    v = view(w)
    fast.residual_add(Tensor(np.ones(v.shape)), v)
    fast.gelu_(view(w))
    fast_functional.GELU.apply(view(w), inplace=True)
    np.testing.assert_array_equal(w.data, before)


def test_a_detached_copy_of_an_output_is_not_written_over():
    h = leaf((2, 3), 7) * 1.0
    kept = h.detach()
    before = kept.data.copy()
    fast.gelu_(h)
    np.testing.assert_array_equal(kept.data, before)


def test_the_fast_gpt_still_writes_over_c_fc_and_every_branch():
    """The in-place paths are a speed trick of the fast GPT: the precondition check must not
    switch them off where they are safe (each block: one GELU, two residual adds)."""
    model = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=0.1))
    granted = []

    def spy(cls):
        original = cls.forward

        def forward(self, *args, **kwargs):
            granted.append((cls.__name__, kwargs.get("inplace")))
            return original(self, *args, **kwargs)
        return mock.patch.object(cls, "forward", forward)

    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    with spy(fast_functional.GELU), spy(fast_functional.ResidualAdd):
        model(idx, idx)
    assert granted == [("ResidualAdd", True), ("GELU", True), ("ResidualAdd", True)] * 2


FRESH_CASES = {
    "Add": (ops.Add, [(2, 3), (3,)], {}), "Sub": (ops.Sub, [(2, 3), (2, 3)], {}),
    "Mul": (ops.Mul, [(2, 3), (1, 3)], {}), "Neg": (ops.Neg, [(2, 3)], {}),
    "Pow 1": (ops.Pow, [(2, 3)], {"exponent": 1}), "Pow 2": (ops.Pow, [(2, 3)], {"exponent": 2}),
    "MatMul": (ops.MatMul, [(2, 3), (3, 4)], {}), "MatMul 1-D": (ops.MatMul, [(3,), (3,)], {}),
    "Log": (ops.Log, [(2, 3)], {}), "Concatenate": (ops.Concatenate, [(2, 3), (2, 1)], {"axis": 1}),
    "Linear": (F.Linear, [(2, 3), (4, 3), (4,)], {}), "fast Linear": (fast_functional.Linear, [(2, 3), (4, 3)], {}),
    "LayerNorm w": (F.LayerNorm, [(2, 3), (3,)], {}), "LayerNorm b": (F.LayerNorm, [(2, 3), (3,), (3,)], {}),
    "fast LayerNorm bare": (fast_functional.LayerNorm, [(2, 3)], {}),
    "GELU": (F.GELU, [(2, 3)], {}), "fast GELU": (fast_functional.GELU, [(2, 3)], {}),
    "Dropout": (F.Dropout, [(2, 3)], {"p": 0.5}),
    "ResidualAdd": (fast_functional.ResidualAdd, [(2, 3), (2, 3)], {}),
    "attention": (F.ScaledDotProductAttention, [(1, 2, 3, 4)] * 3, {}),
    "fast attention": (fast_attention.ScaledDotProductAttention, [(1, 2, 3, 4)] * 3, {}),
    "fused attention": (fast_attention.CausalSelfAttentionQKV, [(1, 3, 12)], {"n_head": 1}),
    "cross_entropy": (F.CrossEntropy, [(2, 3)], {"targets": np.array([0, 2])}),
    "fast cross_entropy": (fast_functional.CrossEntropy, [(2, 3)], {"targets": np.array([0, 2])}),
    "fast LayerNorm w": (fast_functional.LayerNorm, [(2, 3), (3,)], {}),
    "Embedding": (F.Embedding, [(5, 3)], {"first": np.array([[0, 4], [4, 1]])}),
    "fast Embedding": (fast_functional.Embedding, [(5, 3)], {"first": np.array([[0, 4], [4, 1]])}),
}


def _arrays_in(value):
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _arrays_in(v)


@pytest.mark.parametrize("name", list(FRESH_CASES))
def test_every_op_that_says_its_output_is_fresh_shares_it_with_nothing(name):
    """Function.fresh_output is what lets an in-place op write over an output: it must be true."""
    cls, shapes, options = FRESH_CASES[name]
    tensors = [Tensor(np.abs(leaf(s, i).data) + 0.5, requires_grad=True) for i, s in enumerate(shapes)]  # log needs > 0
    if "targets" in options:
        tensors.append(options.pop("targets"))
    if "first" in options:  # the embedding's indices come before the weight
        tensors.insert(0, options.pop("first"))
    ctx_seen = []
    original = cls.forward

    def spy(self, *args, **kwargs):
        ctx_seen.append(self)
        return original(self, *args, **kwargs)

    with mock.patch.object(cls, "forward", spy):
        y = cls.apply(*tensors, **options)
    assert y.unshared, f"{name} no longer says its output is fresh: update this table"
    ctx = ctx_seen[0]
    kept = [a for t in tensors for a in _arrays_in(t.data if isinstance(t, Tensor) else t)]
    kept += [a for value in vars(ctx).values() for a in _arrays_in(value)]
    for a in kept:
        assert not np.shares_memory(y.data, a)


def test_ops_that_keep_or_view_their_output_do_not_say_fresh():
    x = leaf((2, 3), 1)
    for y in (x.exp(), x.tanh(), F.softmax(x), fast.softmax(x), F.log_softmax(x), x / 2.0, x.max(axis=0),
              x.reshape(3, 2), x.transpose(), x[0], F.layer_norm(x), x.sum(axis=0)):
        assert not y.unshared
    assert not x.unshared  # a leaf
    h = x * 1.0
    assert h.unshared
    h.reshape(6)
    assert not h.unshared  # a view of h exists now
    h2 = x * 1.0
    Tensor(h2)
    assert not h2.unshared  # a new leaf shares its array


# ----------------------------------------------------------------------------- softmax accuracy
def _exact_softmax_of_pair(a, b):
    """softmax([a, b]) from the difference alone (exact in float64 for these inputs)."""
    e = math.exp(b - a)
    return [1 / (1 + e), e / (1 + e)]


@pytest.mark.parametrize("mod", REFERENCE_AND_FAST)
@pytest.mark.parametrize("dtype, a, b", [(np.float32, -85.3, -95.3), (np.float64, -706.0, -730.0),
                                         (np.float32, -87.5, -88.0), (np.float32, 88.0, 88.0),
                                         (np.float32, 88.7, 80.0), (np.float64, 709.0, 700.0)])
def test_softmax_keeps_full_precision_where_the_unshifted_exp_would_not(mod, dtype, a, b, no_warnings):
    x = Tensor(np.array([[a, b]], dtype=dtype))
    a32, b32 = (float(v) for v in x.data[0])  # the values as stored
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(mod.softmax(x).data[0], _exact_softmax_of_pair(a32, b32), rtol=rtol, atol=0)


@pytest.mark.parametrize("mod", REFERENCE_AND_FAST)
def test_softmax_of_an_overflowing_row_is_quiet_and_right(mod, no_warnings):
    x = np.array([[1, 2, 3], [95, 0, 1], [1, 2, 3]], dtype=np.float32)
    y = mod.softmax(Tensor(x)).data
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    tiny = np.finfo(np.float32).smallest_subnormal  # e^-95 is subnormal in float32: a few ulps there
    np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-6, atol=2 * tiny)


# ----------------------------------------------------------------------------- smaller differences
def test_the_gradient_of_x_to_the_zero_is_zero_even_at_zero():
    x = Tensor(np.array([0.0, 2.0, -1.0]), requires_grad=True)
    (x**0).sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 0.0])  # torch: 0


@pytest.mark.parametrize("mod", REFERENCE_AND_FAST)
def test_an_inf_in_the_embeddings_upstream_gradient_stays_in_its_row(mod):
    w = Tensor(np.ones((5, 2)), requires_grad=True)
    dy = np.ones((3, 2))
    dy[0, 0] = np.inf
    mod.embedding(np.array([1, 3, 1]), w).backward(dy)
    np.testing.assert_array_equal(w.grad, [[0, 0], [np.inf, 2], [0, 0], [1, 1], [0, 0]])  # torch: that row only


@pytest.mark.parametrize("op", [lambda t, s: t * s, lambda t, s: s * t, lambda t, s: t + s, lambda t, s: s - t,
                                lambda t, s: t / s, lambda t, s: s / t, lambda t, s: t**s])
@pytest.mark.parametrize("scalar", [np.float64(2.0), np.array(2.0), np.int64(2)], ids=["f64", "0-d", "i64"])
def test_a_float32_tensor_keeps_its_dtype_next_to_a_numpy_scalar(op, scalar):
    t = Tensor(np.array([1.0, 3.0], dtype=np.float32), requires_grad=True)
    y = op(t, scalar)
    assert y.dtype == np.float32  # as torch, where a number never widens a tensor
    y.sum().backward()
    assert t.grad.dtype == np.float32


@pytest.mark.parametrize("cls", [optim.AdamW, fast.AdamW], ids=["reference", "fast"])
def test_adamw_over_mixed_dtypes_keeps_each_parameters_dtype(cls):
    a32 = Tensor(np.linspace(-1, 1, 5, dtype=np.float32), requires_grad=True)
    b64 = Tensor(np.linspace(-2, 2, 3), requires_grad=True)
    alone = Tensor(a32.data.copy(), requires_grad=True)  # the same float32 parameter, in its own optimizer
    opt, opt_alone = cls([a32, b64], lr=0.1, weight_decay=0.1), optim.AdamW([alone], lr=0.1, weight_decay=0.1)
    for step in range(3):
        g = np.cos(np.arange(5, dtype=np.float32) + step)
        a32.grad, b64.grad, alone.grad = g, np.sin(np.arange(3.0) + step), g.copy()
        opt.step()
        opt_alone.step()
    assert a32.dtype == np.float32 and b64.dtype == np.float64
    assert opt.state[id(a32)]["exp_avg"].dtype == np.float32
    np.testing.assert_array_equal(a32.data, alone.data)  # float32 arithmetic, as if alone


def _plain_attention(q, k, v, causal):
    s = np.matmul(q, np.swapaxes(k, -1, -2)) / math.sqrt(q.shape[-1])
    if causal:
        s = np.where(np.tril(np.ones(s.shape[-2:], dtype=bool)), s, -np.inf)
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return np.matmul(e / e.sum(axis=-1, keepdims=True), v)


@pytest.mark.parametrize("mod", REFERENCE_AND_FAST)
@pytest.mark.parametrize("q_shape, kv_shape", [((2, 3, 4, 5), (1, 3, 6, 5)), ((2, 3, 4, 5), (3, 6, 5)),
                                               ((1, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (2, 1, 4, 5))])
def test_attention_broadcasts_the_batch_axes_of_q_k_and_v(mod, q_shape, kv_shape):
    q, k, v = leaf(q_shape, 1), leaf(kv_shape, 2), leaf(kv_shape[:-1] + (2,), 3)
    causal = q_shape[-2] <= kv_shape[-2]
    y = mod.scaled_dot_product_attention(q, k, v, is_causal=causal)
    np.testing.assert_allclose(y.data, _plain_attention(q.data, k.data, v.data, causal), rtol=1e-12)
    assert gradcheck(lambda a, b, c: mod.scaled_dot_product_attention(a, b, c, is_causal=causal), [q, k, v])


class _DeviceArray:
    """Stands where a CuPy array stands: NumPy cannot read it implicitly, only .get() copies it."""

    def __init__(self, a):
        self._a = np.asarray(a)
        self.dtype, self.shape, self.ndim = self._a.dtype, self._a.shape, self._a.ndim

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed (as CuPy)")

    def get(self):
        return self._a.copy()


def test_a_tensor_made_on_the_cpu_from_a_device_array_moves_it_first(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=_DeviceArray))
    a = _DeviceArray(np.array([1.0, 2.0], dtype=np.float32))
    t = Tensor(a, device="cpu")
    assert isinstance(t.data, np.ndarray)
    np.testing.assert_array_equal(t.data, [1.0, 2.0])
    t64 = Tensor(a, device="cpu", dtype=np.float64)
    assert t64.dtype == np.float64
