"""gradcheck itself: it passes right backwards and catches wrong ones, even ones a plain sum misses."""

import numpy as np
import pytest

from minigpt import GradcheckError, Tensor, gradcheck, nn
from minigpt import functional as F
from minigpt.functional import CrossEntropy, LayerNorm, Linear, Softmax
from minigpt.ops import Add, Exp, MatMul, Mul, Sum, Tanh
from minigpt.tensor import BackwardError


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


# ----------------------------------------------------------------------------- known-wrong backwards
# Each subclass keeps its op's forward and breaks its backward in one way seen in real code.
WRONG_SCALE = 1 + 1e-4  # PyTorch's default tolerances (rtol 1e-3) let this through


class MatMulMissingTranspose(MatMul):
    """da = dy @ b instead of dy @ bᵀ (same shape when b is square)."""

    def backward(self, dy):
        a, b = self.saved
        return dy @ b, a.T @ dy


class LinearMissingTranspose(Linear):
    """dW = xᵀ @ dy, the transpose of the right dyᵀ @ x."""

    def backward(self, dy):
        x, weight = self.saved
        return dy @ weight, x.T @ dy, dy.sum(axis=0)


class LinearWrongScale(Linear):
    """dW off by a relative 1e-4."""

    def backward(self, dy):
        dx, dW, db = super().backward(dy)
        return dx, dW * WRONG_SCALE, db


class TanhIgnoringDy(Tanh):
    """Returns 1 - y², as if the upstream gradient were all ones."""

    def backward(self, dy):
        return 1 - self.saved * self.saved


class LayerNormConstantStats(LayerNorm):
    """Treats mean and rstd as constants: dx = dy * w * rstd, the two correction terms missing."""

    def backward(self, dy):
        xhat, rstd, weight = self.saved
        _, dw, db = super().backward(dy)
        return dy * weight * rstd, dw, db


class LayerNormWrongScale(LayerNorm):
    """dx off by a relative 1e-4."""

    def backward(self, dy):
        dx, dw, db = super().backward(dy)
        return dx * WRONG_SCALE, dw, db


class SoftmaxMissingSum(Softmax):
    """dx = y * dy: the - sum(y * dy) term is missing."""

    def backward(self, dy):
        return self.saved * dy


class AddMissingUnbroadcast(Add):
    """Returns dy for both inputs, never summing it back to a broadcast input's shape."""

    def backward(self, dy):
        return dy, dy


class ExpFloat32Gradient(Exp):
    """Right values, but computed in float32 whatever the input's dtype."""

    def backward(self, dy):
        return (dy * self.saved).astype(np.float32)


class Exp123(Exp):
    """123 times the right gradient."""

    def backward(self, dy):
        return 123 * dy * self.saved


class CrossEntropyTimesTwo(CrossEntropy):
    def backward(self, dloss):
        dz, _ = super().backward(dloss)
        return 2 * dz, None


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def leaves(*arrays):
    return [Tensor(a, requires_grad=True) for a in arrays]


LN_INPUTS = (rand(3, 5), 1 + rand(5, seed=1), rand(5, seed=2))
# name -> (right fn, wrong fn, input arrays, what the message must say)
KNOWN_WRONG = {  # name: (right op, wrong op, inputs, what the error must say)
    "missing transpose, square": (
        lambda a, b: MatMul.apply(a, b), lambda a, b: MatMulMissingTranspose.apply(a, b),
        (rand(2, 3), rand(3, 3, seed=1)), "gradcheck failed for input 0"),
    "missing transpose, non-square": (
        lambda x, w, b: Linear.apply(x, w, b), lambda x, w, b: LinearMissingTranspose.apply(x, w, b),
        (rand(4, 3), rand(2, 3, seed=1), rand(2, seed=2)),
        r"LinearMissingTranspose.backward returned a gradient of shape \(3, 2\) for its input 1"),
    "ignores the upstream gradient": (
        lambda x: Tanh.apply(x), lambda x: TanhIgnoringDy.apply(x), (rand(3, 4),), "gradcheck failed for input 0"),
    "layer norm: mean and rstd as constants": (
        lambda *t: LayerNorm.apply(*t), lambda *t: LayerNormConstantStats.apply(*t),
        LN_INPUTS, "gradcheck failed for input 0"),
    "softmax: missing sum term": (
        lambda x: Softmax.apply(x, axis=-1), lambda x: SoftmaxMissingSum.apply(x, axis=-1),
        (rand(3, 4),), "gradcheck failed for input 0"),
    "wrong scale 1+1e-4, linear dW": (
        lambda x, w, b: Linear.apply(x, w, b), lambda x, w, b: LinearWrongScale.apply(x, w, b),
        (rand(4, 3), rand(2, 3, seed=1), rand(2, seed=2)), "gradcheck failed for input 1"),
    "wrong scale 1+1e-4, layer norm dx": (
        lambda *t: LayerNorm.apply(*t), lambda *t: LayerNormWrongScale.apply(*t),
        LN_INPUTS, "gradcheck failed for input 0"),
    "missing unbroadcast": (
        lambda a, b: Add.apply(a, b), lambda a, b: AddMissingUnbroadcast.apply(a, b),
        (rand(3, 4), rand(1, 3, 4, seed=1)),
        r"AddMissingUnbroadcast.backward returned a gradient of shape \(1, 3, 4\) for its input 0, "
        r"whose shape is \(3, 4\)"),
    "float32 gradient for a float64 input": (
        lambda x: Exp.apply(x), lambda x: ExpFloat32Gradient.apply(x), (rand(3, 4),),
        "float32 gradient for its input 0"),
}


@pytest.mark.parametrize("name", sorted(KNOWN_WRONG))
def test_gradcheck_passes_the_right_backward_and_catches_the_wrong_one(name):
    right, wrong, arrays, message = KNOWN_WRONG[name]
    assert gradcheck(right, leaves(*arrays))
    with pytest.raises(GradcheckError, match=message):
        gradcheck(wrong, leaves(*arrays))


def test_the_old_tolerances_let_a_wrong_scale_pass_which_the_defaults_catch():
    _, wrong, arrays, _ = KNOWN_WRONG["wrong scale 1+1e-4, layer norm dx"]
    assert gradcheck(wrong, leaves(*arrays), atol=1e-5, rtol=1e-3)  # PyTorch's (and our old) defaults
    with pytest.raises(GradcheckError):
        gradcheck(wrong, leaves(*arrays))


def test_a_missing_unbroadcast_leaves_no_wrongly_shaped_grad_behind():
    a, b = leaves(rand(3, 4), rand(1, 3, 4, seed=1))
    with pytest.raises(BackwardError):
        AddMissingUnbroadcast.apply(a, b).backward(np.ones((1, 3, 4)))
    assert a.grad is None


# ----------------------------------------------------------------------------- non-finite values
@pytest.fixture
def no_float_warnings():
    """Overflow and inf - inf are the point of the tests that use this: no RuntimeWarnings."""
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        yield


def test_a_non_finite_output_is_an_error_that_says_where(no_float_warnings):
    x = rand(2, 3)
    x[1, 2] = 800.0  # exp(800) = inf
    with pytest.raises(GradcheckError, match=r"output is not finite at 1 element\(s\), the first at \(1, 2\) \(inf\)"):
        gradcheck(lambda t: Exp123.apply(t), leaves(x))
    with pytest.raises(GradcheckError, match="not finite"):  # the right backward does not make it pass either
        gradcheck(lambda t: Exp.apply(t), leaves(x))
    with pytest.raises(GradcheckError):  # and saying inf is expected still leaves 123x wrong elements
        gradcheck(lambda t: Exp123.apply(t), leaves(x), nonfinite_ok=True)


def test_cross_entropy_with_every_target_ignored_is_not_a_pass():
    logits, targets = rand(3, 4), np.full(3, -100)
    assert np.isnan(F.cross_entropy(Tensor(logits), targets).item())  # as torch: a mean over no targets
    with pytest.raises(GradcheckError, match="output is not finite"):
        gradcheck(lambda t: CrossEntropyTimesTwo.apply(t, targets), leaves(logits))
    with pytest.raises(GradcheckError, match="gradcheck failed for input 0"):  # with targets counted, caught by value
        gradcheck(lambda t: CrossEntropyTimesTwo.apply(t, np.array([0, -100, 3])), leaves(logits))


def test_a_perturbation_that_makes_the_output_non_finite_is_named(no_float_warnings):
    x = np.array([2.0, 5e-7, 3.0])  # log(5e-7 - 1e-6) is NaN
    with pytest.raises(
            GradcheckError, match=r"numeric gradient of input 0 \(shape \(3,\)\) is not finite at element \(1,\)"):
        gradcheck(lambda t: t.log(), leaves(x))


def masked_scores(q, k, wrong=False):
    """q @ kᵀ with -inf above the diagonal, as attention's causal mask gives."""
    mask = np.triu(np.full((3, 3), -np.inf), k=1)
    op = MatMulWrongScale if wrong else MatMul
    return op.apply(q, k.transpose()) + Tensor(mask)


class MatMulWrongScale(MatMul):
    def backward(self, dy):
        da, db = super().backward(dy)
        return da * WRONG_SCALE, db


def test_nonfinite_ok_compares_the_finite_elements_and_still_catches_a_wrong_one():
    q, k = rand(3, 2), rand(3, 2, seed=1)
    with pytest.raises(GradcheckError, match="output is not finite at 3 element"):
        gradcheck(masked_scores, leaves(q, k))
    assert gradcheck(masked_scores, leaves(q, k), nonfinite_ok=True)
    with pytest.raises(GradcheckError, match="gradcheck failed for input 0"):
        gradcheck(lambda a, b: masked_scores(a, b, wrong=True), leaves(q, k), nonfinite_ok=True)


def test_nonfinite_ok_skips_elements_non_finite_on_both_sides_but_not_on_one(no_float_warnings):
    x = np.array([0.0, 1.0, 4.0])  # d sqrt(x)/dx is inf at 0, numerically NaN (sqrt(-eps))
    with pytest.raises(GradcheckError, match="not finite"):
        gradcheck(lambda t: t ** 0.5, leaves(x))
    assert gradcheck(lambda t: t ** 0.5, leaves(x), nonfinite_ok=True)
    y = rand(3)
    y[0] = 800.0  # exp: output inf; analytic 0 * inf = NaN where the numeric one (that output left out) is 0
    with pytest.raises(GradcheckError, match=r"not finite at 1 element\(s\), the first at \(0,\): analytic nan"):
        gradcheck(lambda t: t.exp(), leaves(y), nonfinite_ok=True)


# ----------------------------------------------------------------------------- scalar outputs, params
class SumAbsDy(Sum):
    """dx = |dy|: right for a positive upstream gradient only."""

    def backward(self, dy):
        return np.abs(dy) * np.ones(self.shape)

    def forward(self, x, **options):
        self.shape = x.shape
        return super().forward(x, **options)


class SumIgnoringDy(SumAbsDy):
    def backward(self, dy):
        return np.ones(self.shape)


@pytest.mark.parametrize("op", [SumAbsDy, SumIgnoringDy])
@pytest.mark.parametrize("seed", range(5))
def test_a_scalar_output_gets_upstream_weights_of_both_signs(op, seed):
    assert gradcheck(lambda t: Sum.apply(t), leaves(rand(2, 3)), seed=seed)
    with pytest.raises(GradcheckError, match="gradcheck failed for input 0"):
        gradcheck(lambda t: op.apply(t), leaves(rand(2, 3)), seed=seed)


def test_params_are_checked_and_restored():
    layer = nn.Linear(3, 2)
    weight, bias = layer.weight, layer.bias
    data, earlier = weight.data, np.full((2, 3), 7.0, dtype=np.float32)
    weight.grad = earlier
    x = Tensor(rand(4, 3))  # needs no gradient: only the params are checked

    seen = []

    def fn(t):
        seen.append(weight.dtype)
        return layer(t)

    assert gradcheck(fn, [x], params=[weight, bias])
    assert set(seen) == {np.dtype(np.float64)}  # checked in float64
    with pytest.raises(GradcheckError, match=r"gradcheck failed for param 0 \(shape \(2, 3\)\)"):
        gradcheck(lambda t: LinearWrongScale.apply(t, weight, bias), [x], params=[weight, bias])
    # whatever happened inside, the parameters are as before
    assert weight.data is data and weight.dtype == np.float32 and weight.grad is earlier and bias.grad is None
    np.testing.assert_array_equal(earlier, 7.0)


def test_params_must_require_grad():
    with pytest.raises(ValueError, match="param 0"):
        gradcheck(lambda t: t * 2, [Tensor(rand(2), requires_grad=True)], params=[Tensor(rand(2))])


# ----------------------------------------------------------------------------- Tensor.backward's own checks
def test_backward_names_the_op_that_returns_a_wrongly_shaped_gradient():
    a, b = leaves(rand(3, 4), rand(1, 3, 4, seed=1))
    with pytest.raises(BackwardError, match=r"AddMissingUnbroadcast.backward returned a gradient of shape \(1, 3, 4\) "
                                            r"for its input 0, whose shape is \(3, 4\)"):
        AddMissingUnbroadcast.apply(a, b).sum().backward()


def test_backward_refuses_a_lower_precision_gradient_and_casts_a_higher_one():
    x = Tensor(rand(3), requires_grad=True)
    with pytest.raises(BackwardError, match=r"ExpFloat32Gradient.backward returned a float32 gradient .* float64"):
        ExpFloat32Gradient.apply(x).sum().backward()
    a = Tensor(rand(3).astype(np.float32), requires_grad=True)
    (a * Tensor(rand(3, seed=1))).sum().backward()  # float32 * float64: a's gradient arrives as float64
    assert a.grad.dtype == np.float32


class TanhDoublingDyInPlace(Tanh):
    """Doubles its upstream gradient in place: if that array were gradcheck's own weight, the
    numeric side would use the doubled weight too, and the two sides would agree."""

    def backward(self, dy):
        dy *= 2.0
        return super().backward(dy)


def test_a_backward_that_writes_into_its_upstream_gradient_is_caught():
    x = x64((2, 3), 8)
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: TanhDoublingDyInPlace.apply(t), [x])
    dy = np.ones((2, 3))
    TanhDoublingDyInPlace.apply(x).backward(dy)
    np.testing.assert_array_equal(dy, np.ones((2, 3)))  # the caller's array is not the op's to change
