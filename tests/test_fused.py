"""Fused ops equal their composed, obvious twins, in value and in gradient."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigpt
from minigpt import Tensor, gradcheck
from minigpt import functional as F
from minigpt.fused import causal_self_attention, residual_add
from tests.strategies import arrays, seeds


def composed(qkv, n_head, dropout_p=0.0):
    B, T, C3 = qkv.shape
    C = C3 // 3
    heads = qkv.reshape(B, T, 3, n_head, C // n_head).transpose(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(heads[0], heads[1], heads[2], is_causal=True, dropout_p=dropout_p)
    return y.transpose(0, 2, 1, 3).reshape(B, T, C)


@st.composite
def packed_qkv(draw):
    B, T, nh, hs = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return draw(arrays((B, T, 3 * nh * hs))), nh


@given(case=packed_qkv(), seed=seeds, p=st.sampled_from([0.0, 0.25]))
def test_fused_attention_equals_the_composed_ops(case, seed, p):
    x, nh = case
    outs, grads = [], []
    for fn in (causal_self_attention, composed):
        t = Tensor(x, requires_grad=True)
        minigpt.manual_seed(seed)  # the same dropout mask for both
        y = fn(t, nh, p)
        y.backward(np.random.default_rng(seed).standard_normal(y.shape))
        outs.append(y.data)
        grads.append(t.grad)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


@given(case=packed_qkv())
def test_fused_attention_gradient(case):
    x, nh = case
    assert gradcheck(lambda t: causal_self_attention(t, nh), [Tensor(x, requires_grad=True)])


def test_fused_attention_keeps_float32_and_checks_p():
    x = Tensor(np.random.default_rng(0).standard_normal((2, 4, 12)).astype(np.float32), requires_grad=True)
    y = causal_self_attention(x, 2)
    y.sum().backward()
    assert y.dtype == x.grad.dtype == np.float32
    with pytest.raises(ValueError):
        causal_self_attention(x, 2, dropout_p=2.0)


@given(x=arrays((3, 4)), b=arrays((3, 4)), seed=seeds)
def test_residual_add_equals_add_and_writes_over_the_branch(x, b, seed):
    g = np.random.default_rng(seed).standard_normal((3, 4))
    results = []
    for fn in (residual_add, lambda a, c: a + c):
        tx, tb = Tensor(x, requires_grad=True), Tensor(b, requires_grad=True)
        branch = tb * 1.0  # an intermediate, as a linear layer's output is
        y = fn(tx, branch)
        y.backward(g)
        results.append((y.data.copy(), tx.grad, tb.grad, y.data is branch.data))
    (y, dx, db, reused), (y_ref, dx_ref, db_ref, _) = results
    np.testing.assert_array_equal(y, y_ref)  # a + b == b + a exactly
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(db, db_ref)
    assert reused
    assert gradcheck(lambda a, c: residual_add(a, c * 1.0), [Tensor(x, requires_grad=True), Tensor(b, requires_grad=True)])


def test_residual_add_broadcasting_falls_back_to_a_new_array():
    x = Tensor(np.ones((2, 3)), requires_grad=True)
    b_leaf = Tensor(np.arange(3.0), requires_grad=True)
    b = b_leaf * 1.0  # an op's output, so writing over it would be allowed, but it broadcasts
    y = residual_add(x, b)
    np.testing.assert_array_equal(y.data, np.ones((2, 3)) + np.arange(3.0))
    np.testing.assert_array_equal(b.data, np.arange(3.0))
    y.backward(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.grad, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(b_leaf.grad, [3.0, 5.0, 7.0])


def test_residual_add_never_writes_into_a_leaf_or_a_read_only_branch():
    leaf_ = Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = residual_add(Tensor(np.ones((2, 3))), leaf_)
    np.testing.assert_array_equal(y.data, np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(leaf_.data, np.arange(6.0).reshape(2, 3))
    data = np.arange(6.0).reshape(2, 3)
    data.flags.writeable = False
    branch = Tensor(data, requires_grad=True).reshape(2, 3)  # an op's output: a read-only view of data
    assert not branch.is_leaf and not branch.data.flags.writeable
    y = residual_add(Tensor(np.ones((2, 3))), branch)
    np.testing.assert_array_equal(y.data, np.arange(6.0).reshape(2, 3) + 1)
    np.testing.assert_array_equal(data, np.arange(6.0).reshape(2, 3))
