"""The autograd core: every Tensor operator is gradient-checked, and backward's semantics hold."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minigpt
from minigpt import Tensor, gradcheck, no_grad
from tests.strategies import arrays, broadcastable_pair, shapes


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
@given(data=st.data())
def test_binary_operator_gradients_with_broadcasting(op, data):
    sa, sb = data.draw(broadcastable_pair())
    a = data.draw(arrays(sa))
    b = data.draw(arrays(sb, away_from_zero=(op == "div")))
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


@st.composite
def matmul_shapes(draw):
    n, k, m = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(shapes(min_dims=0, max_dims=2, max_side=3))
    kind = draw(st.sampled_from(["same", "broadcast_b", "broadcast_a", "vec_a", "vec_b"]))
    if kind == "same":
        return batch + (n, k), batch + (k, m)
    if kind == "broadcast_b":
        return batch + (n, k), (k, m)
    if kind == "broadcast_a":
        return (n, k), batch + (k, m)
    if kind == "vec_a":
        return (k,), batch + (k, m)
    return batch + (n, k), (k,)


@given(data=st.data())
def test_matmul_gradient_batched_and_broadcasting(data):
    sa, sb = data.draw(matmul_shapes())
    a, b = data.draw(arrays(sa)), data.draw(arrays(sb))
    out = Tensor(a) @ Tensor(b)
    np.testing.assert_allclose(out.data, np.matmul(a, b))
    assert gradcheck(lambda x, y: x @ y, [leaf(a), leaf(b)])


@given(data=st.data())
def test_reductions_gradients(data):
    x = data.draw(arrays(data.draw(shapes(min_dims=1, max_dims=3))))
    axis = data.draw(st.sampled_from([None, 0, -1] + ([(0, -1)] if x.ndim > 1 else [])))
    keep = data.draw(st.booleans())
    assert gradcheck(lambda t: t.sum(axis=axis, keepdims=keep), [leaf(x)])
    assert gradcheck(lambda t: t.mean(axis=axis, keepdims=keep), [leaf(x)])
    assert gradcheck(lambda t: t.max(axis=axis, keepdims=keep), [leaf(x)])
    np.testing.assert_allclose(Tensor(x).max(axis=axis, keepdims=keep).data, x.max(axis=axis, keepdims=keep))


def test_max_shares_the_gradient_between_ties():
    x = leaf([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]])
    x.max(axis=1).sum().backward()
    np.testing.assert_allclose(x.grad, [[0, 0.5, 0.5], [1, 0, 0]])


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
           np.s_[[0, 0, 1]], np.s_[np.array([1, 0, 1])]]


@pytest.mark.parametrize("index", INDEXES, ids=[str(i) for i in range(len(INDEXES))])
@given(x=arrays((3, 4)))
def test_indexing_gradients_including_repeated_rows(index, x):
    np.testing.assert_array_equal(Tensor(x)[index].data, x[index])
    assert gradcheck(lambda t: t[index], [leaf(x)])


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


def test_operators_match_numpy_on_device(device):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((4, 5))
    ta = Tensor(a, requires_grad=True, device=device)
    tb = Tensor(b, requires_grad=True, device=device)
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
