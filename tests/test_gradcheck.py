"""gradcheck itself: it passes right backwards and catches wrong ones, even ones a plain sum misses."""

import numpy as np
import pytest

from minigpt import GradcheckError, Tensor, gradcheck
from minigpt.functional import Softmax
from minigpt.ops import Mul


class SoftmaxWrongBackward(Softmax):
    """dx = y * (dy - mean(dy)): right when dy is all ones (a plain .sum()), wrong otherwise."""

    def backward(self, dy):
        return self.saved * (dy - dy.mean(axis=self.axis, keepdims=True))


class MulWrongBackward(Mul):
    """Forgets that b's gradient is dy * a (returns dy * b for both)."""

    def backward(self, dy):
        a, b = self.saved
        return dy * b, dy * b


def x64(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


def test_gradcheck_passes_a_correct_backward():
    assert gradcheck(lambda t: Softmax.apply(t, axis=-1), [x64((3, 4))])


def test_gradcheck_catches_a_wrong_softmax_backward_that_a_plain_sum_misses():
    x = x64((3, 4))
    # a plain sum cannot see the bug: the wrong and the right gradient of sum(softmax) are both 0
    SoftmaxWrongBackward.apply(x, axis=-1).sum().backward()
    np.testing.assert_allclose(x.grad, 0.0, atol=1e-12)
    # gradcheck's random upstream weight does
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda t: SoftmaxWrongBackward.apply(t, axis=-1), [x])


def test_gradcheck_names_the_input_with_the_wrong_gradient():
    a, b = x64((2, 3), 1), x64((2, 3), 2)
    with pytest.raises(GradcheckError, match=r"input 1 \(shape \(2, 3\)\) at element"):
        gradcheck(lambda p, q: MulWrongBackward.apply(p, q), [a, b])


def test_gradcheck_checks_only_inputs_that_require_grad_and_casts_to_float64():
    a = Tensor(np.ones((2, 2), dtype=np.float32), requires_grad=True)
    b = Tensor(np.ones((2, 2), dtype=np.float32))
    seen = []

    def fn(p, q):
        seen.append(p.dtype)
        return p * q

    assert gradcheck(fn, [a, b])
    assert set(seen) == {np.dtype(np.float64)}
    with pytest.raises(ValueError, match="requires_grad"):
        gradcheck(fn, [b, b])


def test_gradcheck_fails_when_a_needed_gradient_never_arrives():
    a = x64((3,))
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: t.detach() * t.detach() + 0 * t.detach(), [a])
