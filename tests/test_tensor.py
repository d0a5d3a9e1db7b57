"""The autograd core: every Tensor operator is gradient-checked, and backward's semantics hold."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import minigpt
from minigpt import Tensor, gradcheck, no_grad
from tests.strategies import (array_from, arrays, boolean_indexes, broadcastable_pair, matmul_shapes, seeds,
                              shapes)


def leaf(x):
    return Tensor(np.array(x, dtype=np.float64), requires_grad=True)


# ----------------------------------------------------------------------------- operators
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}


@pytest.mark.parametrize("op", sorted(BINARY))
@given(pair=broadcastable_pair(), seed=seeds)
@example(pair=((3, 1), (1, 4)), seed=0)  # broadcast on both sides
@example(pair=((2, 1, 3), (4, 1)), seed=1)  # and one side with fewer axes
@example(pair=((5,), (6, 1)), seed=2)
def test_binary_operator_gradients_with_broadcasting(op, pair, seed):
    sa, sb = pair
    a = array_from(sa, seed)
    b = array_from(sb, seed + 1, away_from_zero=(op == "div"))
    out = BINARY[op](Tensor(a), Tensor(b))
    np.testing.assert_array_equal(out.data, BINARY[op](a, b))  # NumPy's broadcasting, NumPy's values
    assert gradcheck(BINARY[op], [leaf(a), leaf(b)])


@pytest.mark.parametrize("op", sorted(BINARY))
@given(x=arrays(away_from_zero=True), c=st.floats(0.5, 3.0))
def test_operators_with_python_numbers_on_either_side(op, x, c):
    fn = BINARY[op]
    assert gradcheck(lambda t: fn(t, c), [leaf(x)])
    assert gradcheck(lambda t: fn(c, t), [leaf(x)])


@given(x=arrays(positive=True), p=st.sampled_from([2, 3, 0.5, -1.0, 1.7]))
def test_pow_gradient(x, p):
    assert gradcheck(lambda t: t**p, [leaf(x)])


@given(x=arrays())
def test_neg_exp_tanh_gradients(x):
    assert gradcheck(lambda t: -t, [leaf(x)])
    assert gradcheck(lambda t: t.exp(), [leaf(x)])
    assert gradcheck(lambda t: t.tanh(), [leaf(x)])


@given(x=arrays(positive=True))
def test_log_gradient(x):
    assert gradcheck(lambda t: t.log(), [leaf(x)])


@given(pair=matmul_shapes(), seed=seeds)
@example(pair=((3,), (3,)), seed=0)  # vector @ vector -> a 0-d result
@example(pair=((2, 3), (3,)), seed=1)  # matrix @ vector
@example(pair=((3,), (3, 2)), seed=2)  # vector @ matrix
@example(pair=((3,), (2, 3, 4)), seed=3)  # vector @ batched
@example(pair=((2, 4, 3), (3,)), seed=4)  # batched @ vector
@example(pair=((2, 1, 3, 4), (5, 4, 2)), seed=5)  # batch axes broadcast on both sides
def test_matmul_forward_and_gradient_follow_numpy_matmul(pair, seed):
    sa, sb = pair
    a, b = array_from(sa, seed), array_from(sb, seed + 1)
    expected = np.matmul(a, b)
    out = Tensor(a) @ Tensor(b)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-14)
    ta, tb = leaf(a), leaf(b)
    dy = array_from(expected.shape, seed + 2)
    (ta @ tb).backward(dy)
    # y = a @ b on the matrix axes; a 1-D a is a row (1, k), a 1-D b a column (k, 1), and the
    # batch axes that broadcasting added are summed away, written here with plain NumPy:
    a2, b2 = (a[None, :] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    dy2 = dy.reshape(dy.shape + (1,)) if b.ndim == 1 else dy
    dy2 = dy2.reshape(dy2.shape[:-1] + (1, dy2.shape[-1])) if a.ndim == 1 else dy2
    da, db = dy2 @ np.swapaxes(b2, -1, -2), np.swapaxes(a2, -1, -2) @ dy2
    da = sum_to(da, a2.shape).reshape(a.shape)
    db = sum_to(db, b2.shape).reshape(b.shape)
    assert ta.grad.shape == a.shape and tb.grad.shape == b.shape
    np.testing.assert_allclose(ta.grad, da, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tb.grad, db, rtol=1e-12, atol=1e-14)
    assert gradcheck(lambda x, y: x @ y, [leaf(a), leaf(b)])


def sum_to(g, shape):
    """Sum g over the axes that broadcasting to g.shape added to ``shape`` (plain NumPy)."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1), keepdims=True)


@given(shape=shapes(min_dims=1, max_dims=3, max_side=5), seed=seeds, axis=st.sampled_from([None, 0, -1, (0, -1)]),
       keep=st.booleans())
@example(shape=(3, 1), seed=0, axis=-1, keep=False)  # reducing an axis of size 1 (C = 1)
@example(shape=(1,), seed=1, axis=None, keep=True)
@example(shape=(2, 1, 1), seed=2, axis=(0, -1), keep=True)
def test_reductions_gradients(shape, seed, axis, keep):
    x = array_from(shape, seed)
    if axis == (0, -1) and x.ndim == 1:
        axis = 0
    for name in ("sum", "mean", "max"):
        out = getattr(Tensor(x), name)(axis=axis, keepdims=keep)
        np.testing.assert_allclose(out.data, getattr(np, name)(x, axis=axis, keepdims=keep), rtol=1e-12)
        assert gradcheck(lambda t: getattr(t, name)(axis=axis, keepdims=keep), [leaf(x)])


def test_max_shares_the_gradient_between_ties():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


def test_max_with_infinite_entries():
    inf = np.inf
    x = leaf([[-inf, 1.0, 2.0], [-inf, -inf, -inf], [0.0, inf, -inf], [-inf, 3.0, -inf]])
    y = x.max(axis=1)
    np.testing.assert_array_equal(y.data, [2.0, -inf, inf, 3.0])
    y.backward(np.array([1.0, 2.0, 3.0, 4.0]))
    # the gradient goes to the largest entry (-inf loses to any number); an all -inf row is a
    # three-way tie that shares its gradient, as for finite ties
    np.testing.assert_array_equal(x.grad, [[0, 0, 1], [2 / 3, 2 / 3, 2 / 3], [0, 3, 0], [0, 4, 0]])


@given(data=st.data())
def test_reshape_transpose_gradients(data):
    shape = data.draw(shapes(min_dims=2, max_dims=3))
    x = data.draw(arrays(shape))
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    assert gradcheck(lambda t: t.transpose(*perm), [leaf(x)])
    assert gradcheck(lambda t: t.transpose(), [leaf(x)])
    assert gradcheck(lambda t: t.reshape(-1), [leaf(x)])
    assert gradcheck(lambda t: t.reshape(shape[::-1]), [leaf(x)])
    np.testing.assert_array_equal(Tensor(x).transpose(*perm).data, x.transpose(perm))


INDEXES = [np.s_[0], np.s_[1:], np.s_[:, 0], np.s_[..., -1], np.s_[::2], np.s_[None, 0],
           np.s_[[0, 0, 1]], np.s_[np.array([1, 0, 1])], np.s_[:, [-1, 0, -1]]]


@pytest.mark.parametrize("index", INDEXES, ids=[str(i) for i in range(len(INDEXES))])
@given(x=arrays(shapes(min_dims=2, max_dims=3, min_side=2, max_side=5)))
def test_indexing_gradients_including_repeated_rows(index, x):
    np.testing.assert_array_equal(Tensor(x)[index].data, x[index])
    assert gradcheck(lambda t: t[index], [leaf(x)])


@given(data=st.data(), x=arrays(shapes(min_dims=2, max_dims=3, max_side=5)))
def test_boolean_mask_indexing(data, x):
    mask = data.draw(boolean_indexes(x.shape))
    t = leaf(x)
    y = t[mask]
    np.testing.assert_array_equal(y.data, x[mask])
    dy = data.draw(arrays(x[mask].shape))
    y.backward(dy)
    expected = np.zeros_like(x)
    expected[mask] = dy  # a mask picks each element at most once: dy lands where y came from
    np.testing.assert_array_equal(t.grad, expected)
    if x[mask].size:
        assert gradcheck(lambda u: u[mask], [leaf(x)])


def test_repeated_advanced_index_accumulates():
    x = leaf(np.arange(3.0))
    x[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- backward semantics
def test_gradients_accumulate_until_zeroed():
    x = leaf([1.0, 2.0])
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])
    x.zero_grad()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 3.0])


def test_tensor_used_many_times_gets_the_sum_of_its_gradients():
    x = leaf([2.0])
    y = x * x * x + x  # dy/dx = 3x² + 1 = 13
    z = y * y  # dz/dx = 2 y y' = 2 * 10 * 13 = 260
    z.sum().backward()
    np.testing.assert_allclose(x.grad, [260.0])


def test_shared_subexpression_and_diamond_graph():
    x = leaf([1.5, -0.5])
    a = x.exp()
    b = a * 2
    c = a + b  # both paths reach a
    (c * a).sum().backward()  # = 3 a², d/dx = 6 a² = 6 e^{2x}
    np.testing.assert_allclose(x.grad, 6 * np.exp(2 * x.data))


def test_leaf_gradients_do_not_alias_each_other():
    a, b = leaf([1.0, 2.0]), leaf([3.0, 4.0])
    (a + b).sum().backward()  # both receive the very same upstream array
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, [1.0, 1.0])


def test_deep_graph_has_no_recursion_limit():
    x = leaf([1.0])
    y = x
    for _ in range(20000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [1.0])


def test_no_grad_records_nothing_and_restores():
    x = leaf([1.0, 2.0])
    with no_grad():
        y = x * 2
        assert not minigpt.is_grad_enabled()
    assert minigpt.is_grad_enabled()
    assert not y.requires_grad and y.is_leaf
    with pytest.raises(RuntimeError):
        y.sum().backward()


def test_no_grad_as_decorator():
    @no_grad()
    def f(t):
        return t * 2

    assert not f(leaf([1.0])).requires_grad


def test_backward_needs_a_scalar_or_a_gradient():
    x = leaf([1.0, 2.0])
    with pytest.raises(RuntimeError, match="single value"):
        (x * 2).backward()
    (x * 2).backward(np.array([1.0, 10.0]))
    np.testing.assert_array_equal(x.grad, [2.0, 20.0])


def test_second_backward_through_a_freed_graph_is_an_error():
    x = leaf([1.0])
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_detach_cuts_the_graph():
    x = leaf([3.0])
    (x * x.detach()).sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0])


# ----------------------------------------------------------------------------- construction, dtype, device
def test_construction_and_attributes():
    t = Tensor([[1.0, 2.0]])
    assert t.dtype == np.float32 and t.shape == (1, 2) and t.ndim == 2 and t.device == "cpu"
    assert Tensor([1, 2]).dtype == np.int64
    assert Tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    assert Tensor([1.0], dtype=np.float64).dtype == np.float64
    assert Tensor(np.float32(2.5)).item() == 2.5
    n = t.numpy()
    n[0, 0] = 100
    assert t.data[0, 0] == 1.0  # numpy() is a copy


def test_int_tensors_cannot_require_grad():
    with pytest.raises(TypeError):
        Tensor([1, 2], requires_grad=True)


def test_float32_stays_float32_through_every_operator():
    x = Tensor(np.ones((2, 3), dtype=np.float32), requires_grad=True)
    y = ((x * 2.5 + 1) / 3 - x**2).exp().log().tanh() @ Tensor(np.ones((3, 2), np.float32))
    y = y.mean(axis=0).sum()
    assert y.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


def test_to_casts_and_backpropagates():
    x = Tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = x.to(dtype=np.float64)
    assert y.dtype == np.float64 and x.to() is x
    (y * 2).sum().backward()
    assert x.grad.dtype == np.float32
    np.testing.assert_array_equal(x.grad, [2, 2, 2])


def test_numpy_array_on_the_left_gives_a_tensor():
    x = leaf([1.0, 2.0])
    y = np.array([3.0, 4.0]) * x
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 4.0])


def test_operators_on_the_gpu_match_the_cpu(gpu_device):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    ta = Tensor(a, requires_grad=True, device=gpu_device)
    tb = Tensor(b, requires_grad=True, device=gpu_device)
    out = ((ta @ tb).tanh() * 2 - 1).sum()
    out.backward()
    ref_a, ref_b = Tensor(a, requires_grad=True), Tensor(b, requires_grad=True)
    ((ref_a @ ref_b).tanh() * 2 - 1).sum().backward()
    np.testing.assert_allclose(minigpt.backend.to_numpy(ta.grad), ref_a.grad, rtol=1e-12)
    np.testing.assert_allclose(minigpt.backend.to_numpy(tb.grad), ref_b.grad, rtol=1e-12)


@given(data=st.data())
def test_cat_gradient(data):
    base = data.draw(shapes(min_dims=1, max_dims=3))
    axis = data.draw(st.integers(-len(base), len(base) - 1))
    parts = []
    for _ in range(data.draw(st.integers(1, 3))):
        shape = list(base)
        shape[axis] = data.draw(st.integers(1, 3))
        parts.append(data.draw(arrays(tuple(shape))))
    np.testing.assert_array_equal(minigpt.cat([Tensor(p) for p in parts], axis=axis).data,
                                  np.concatenate(parts, axis=axis))
    assert gradcheck(lambda *ts: minigpt.cat(ts, axis=axis), [leaf(p) for p in parts])
