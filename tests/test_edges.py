"""The engine at its edges: each test here pins a defect an independent review found,
with the expected value from the math or from PyTorch's documented behaviour, never from minigpt.

- matmul of 1-D operands and batch axes broadcast on both sides, forward and backward;
- cross-entropy rows whose target is ignored hold inf or NaN: they touch neither loss nor gradient;
- the fast GPT's in-place paths (GELU, the residual adds) write over no array the backward needs;
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

import minigpt
from minigpt import Tensor, fast, gradcheck, nn, optim
from minigpt import functional as F
from minigpt.fast import functional as fast_functional
from minigpt.fast import gpt as fast_gpt

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
# fast.GPT writes GELU over c_fc's output and each residual add over its branch's output: arrays
# that nothing else reads (a linear layer saves its input, not its output). The caller decides
# (fast/gpt.py); the graph keeps no bookkeeping for it. These tests hold the decision to be safe.
def test_the_fast_gpt_writes_over_c_fc_and_every_branch():
    model = fast.GPT(nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=0.1))
    written_over = []  # (op, whether its output is the very array of the input it was asked to write over)

    def spy(cls, index):
        original = cls.forward

        def forward(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            written_over.append((cls.__name__, kwargs.get("inplace", False) and out is args[index]))
            return out
        return mock.patch.object(cls, "forward", forward)

    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    with spy(fast_functional.GELU, 0), spy(fast_functional.ResidualAdd, 1):
        model(idx, idx)
    assert written_over == [("ResidualAdd", True), ("GELU", True), ("ResidualAdd", True)] * 2


def _gpt_grads(model, idx):
    model.zero_grad()
    minigpt.manual_seed(3)  # the same dropout masks
    _, loss = model(idx, idx)
    loss.backward()
    return loss.item(), {n: p.grad.copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_writing_over_those_arrays_changes_no_number(dropout):
    """Forward and backward through the in-place GELU and adds equal the reference's."""
    config = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8, dropout=dropout)
    minigpt.manual_seed(0)
    model = fast.GPT(config).to(dtype="float64")
    idx = np.random.default_rng(1).integers(0, 11, (3, 8))
    loss, grads = _gpt_grads(model, idx)
    with fast.disabled():
        loss_ref, grads_ref = _gpt_grads(model, idx)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_writing_over_an_array_that_is_still_needed_is_caught():
    """The check above fails where an in-place op writes over an array the backward pass still
    reads and nothing else: here GELU over the layer norm's output after c_fc has read it (c_fc
    saves it as its input), which leaves the forward pass exactly as it was."""
    config = nn.GPTConfig(block_size=8, vocab_size=11, n_layer=1, n_head=2, n_embd=8)
    minigpt.manual_seed(0)
    model = fast.GPT(config).to(dtype="float64")
    idx = np.random.default_rng(1).integers(0, 11, (3, 8))

    def unsafe_mlp(mlp, x):
        h = fast_functional.GELU.apply(fast_functional.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), inplace=True)
        fast_functional.GELU.apply(x, inplace=True)  # x is read again by c_fc's backward: wrong
        return fast_functional.linear(h, mlp.c_proj.weight, mlp.c_proj.bias)

    with fast.disabled():
        loss_ref, grads_ref = _gpt_grads(model, idx)
    with mock.patch.object(fast_gpt, "_mlp", unsafe_mlp):
        loss, grads = _gpt_grads(model, idx)
    assert loss == pytest.approx(loss_ref, rel=1e-12)  # the forward cannot tell
    assert not np.allclose(grads["transformer.h.0.mlp.c_fc.weight"], grads_ref["transformer.h.0.mlp.c_fc.weight"])


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
