"""Numerical gradient checking: is a hand-written backward right?

For a function f and inputs x, pick a random fixed weight w of f's output shape and
look at the scalar L(x) = sum(f(x) * w). Backprop gives ∂L/∂x analytically (it sends
the upstream gradient w into f's backward). Central differences give it numerically:
    ∂L/∂x_j ≈ sum_k w_k (f_k(x + h e_j) - f_k(x - h e_j)) / (2h)
with an error of order h², in float64. The two must agree element by element.

Why a random w and not plain ``sum(f(x))``: the upstream gradient would then be all ones,
and ones are special: softmax's rows sum to 1, so sum(softmax(x)) is constant and its
gradient is 0 whatever the backward computes; layer norm has the same blind spot.

Why TWO random weights: the numeric column (f(x + h e_j) - f(x - h e_j)) / 2h is computed
once per input element and contracted with both, so the second weight costs one more
forward and backward, not another sweep of central differences. A backward that is not
linear in its upstream gradient (one that ignores it, takes its absolute value or adds a
constant) agrees with the numbers for one weight at most. For a one-element output the two
weights are a positive one away from 1 and a negative one away from -1 and 0.

What else is checked, because each one once let a wrong backward pass:
- every value is finite (the output, both gradients): ``nan > tol`` is False, so a single
  inf or NaN used to switch the comparison off. ``nonfinite_ok=True`` says non-finite values
  are expected: then non-finite outputs get weight 0, and only gradient elements that are
  finite on both sides are compared (finite on one side only is still an error);
- each gradient has its input's shape and dtype (float64): ``Tensor.backward`` raises
  ``BackwardError`` for an op that returns a gradient of the wrong shape, such as an Add that
  forgot to unbroadcast, and gradcheck reports it as a ``GradcheckError``;
- ``params=``: tensors that ``fn`` captures (a layer's weight) rather than takes as arguments.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Sequence

from minigpt import backend
from minigpt.tensor import BackwardError, Tensor, no_grad

# The default tolerances, set from measurement (see ``gradcheck``'s docstring for the reasoning).
ATOL = 1e-8
RTOL = 1e-5
ROUNDOFF_SAFETY = 64.0  # times the estimated roundoff of a central difference


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one (or is not finite, or has the
    wrong shape or dtype)."""


def _float64_array(t: Tensor) -> Any:
    """A contiguous float64 copy of t's array. Always a copy: gradcheck perturbs it in place,
    and the caller's array (maybe a read-only one, maybe shared) must not change even for a moment."""
    return t.xp.array(t.data, dtype="float64", order="C", copy=True)


def _float64_copy(x: Any) -> Any:
    """A float64 copy of a float Tensor (keeping requires_grad); anything else unchanged."""
    if isinstance(x, Tensor) and x.dtype.kind == "f":
        return Tensor(_float64_array(x), requires_grad=x.requires_grad)
    return x


def _output(fn: Callable[..., Any], inputs: Sequence[Any]) -> Tensor:
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    return out


def _unravel(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index tuple of element ``flat`` of a C-ordered array of ``shape`` (host ints only,
    so it works the same whether the array lives in NumPy or CuPy)."""
    where = []
    for n in reversed(shape):
        flat, r = divmod(flat, n)
        where.append(r)
    return tuple(reversed(where))


def _first(mask: Any) -> tuple[int, int]:
    """(flat index of the first True in ``mask``, how many are True)."""
    xp = backend.get_array_module(mask)
    flat = mask.reshape(-1)
    return int(xp.argmax(flat)), int(flat.sum())


def _upstream_weights(shape: tuple[int, ...], seed: int, device: str) -> list[Any]:
    """Two fixed random upstream gradients of the output's shape, float64.

    Drawn from their own generator (not minigpt's), so a check leaves the random stream of
    the code around it alone. For a one-element output a standard normal draw could land
    near 0 or ±1, where a wrong backward can look right; there the two weights are drawn
    from [1.25, 2] and [-0.75, -0.25] instead: different signs and sizes, none near 0 or ±1.
    """
    cpu = backend.xp_for("cpu")
    rng = cpu.random.default_rng(seed)
    if math.prod(shape) == 1:
        weights = [cpu.full(shape, rng.uniform(1.25, 2.0)), cpu.full(shape, -rng.uniform(0.25, 0.75))]
    else:
        weights = [rng.standard_normal(shape), rng.standard_normal(shape)]
    return [backend.move(w, device) for w in weights]


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
              atol: float = ATOL, rtol: float = RTOL, seed: int = 0, *,
              params: Sequence[Tensor] = (), nonfinite_ok: bool = False) -> bool:
    """Check the analytic gradients of ``sum(fn(*inputs) * w)``, for two random upstream
    weights ``w``, against central differences with step ``eps``.

    Float Tensors among ``inputs`` are copied to float64; those with ``requires_grad`` are
    checked ("input i" in messages). ``params`` are tensors that ``fn`` uses without taking
    them as arguments (a layer's weight): for the check their ``.data`` is replaced by a
    float64 copy and their ``.grad`` cleared, and both are put back afterwards, whatever
    happens ("param k" in messages). The weights come from ``seed``. ``fn`` must be
    deterministic (reseed inside it if it draws random numbers).

    Element j passes when |analytic_j - numeric_j| <= atol + rtol * |numeric_j| + floor_j.

    floor_j is the roundoff of the central difference itself. Each output f_k is computed
    with an error of a few units in its last place, about u |f_k| (u = 2.2e-16 in float64);
    the difference f_k(x + h e_j) - f_k(x - h e_j) divided by 2h keeps that absolute error,
    so it grows to u |f_k| / h: with h = 1e-6, a relative 2e-10 of the OUTPUT, not of the
    gradient. Summed with the weights, floor_j = ROUNDOFF_SAFETY * u * sum_k |w_k f_k| / 2h
    (|f_k| the larger of |f_k(x ± h e_j)|) over the outputs that element j moves: the others
    are computed twice in exactly the same way and cancel exactly. The safety factor
    covers outputs computed through many ops (a whole GPT loss), which round more than once.

    The defaults (atol 1e-8, rtol 1e-5) are far tighter than PyTorch's (1e-5, 1e-3): those
    are meant for any dtype and let a backward off by a factor 1 + 5e-4 pass. Here everything
    is float64 and the floor accounts for roundoff, so what remains is the O(h²) truncation
    error and the backward's own roundoff. Measured over every gradcheck of a correct backward
    in the test suite (about 460,000 compared elements, hypothesis profiles "ci" and
    "thorough"): the worst |analytic - numeric| was 1.2e-6 (exp of a large input, its floor
    3e-6 per unit of safety), the worst relative error 2.1e-6 (cross-entropy; 4.2e-7 for a
    layer norm of a nearly constant row: truncation error). With these defaults no correct
    backward came within a factor 20 of failing, and a backward off by 1 + 1e-4 fails
    wherever its gradient is larger than about 1e-3. ``atol`` matters only for gradients
    near zero, and for outputs that cancel (gelu far left of 0) where the floor underestimates.

    Returns True, or raises ``GradcheckError`` naming the tensor and its worst element. Any
    inf or NaN in the output or in either gradient is an error unless ``nonfinite_ok``.
    """
    inputs = [_float64_copy(x) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    params = list({id(p): p for p in params}.values())  # a tied weight once
    for k, p in enumerate(params):
        if not isinstance(p, Tensor) or p.dtype.kind != "f" or not p.requires_grad:
            raise ValueError(f"gradcheck: param {k} must be a float Tensor with requires_grad=True")
    checked = [(f"input {i}", x) for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    checked += [(f"param {k}", p) for k, p in enumerate(params)]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True (and no params were given)")

    kept = [(p.data, p.grad) for p in params]
    try:
        for p in params:
            p.data, p.grad = _float64_array(p), None
        _check(fn, inputs, checked, eps, atol, rtol, seed, nonfinite_ok)
    finally:
        for p, (data, grad) in zip(params, kept):
            p.data, p.grad = data, grad
    return True


def _check(fn: Callable[..., Tensor], inputs: list[Any], checked: list[tuple[str, Tensor]], eps: float,
           atol: float, rtol: float, seed: int, nonfinite_ok: bool) -> None:
    """gradcheck's work, once the inputs and params are float64 copies."""
    # ---- analytic: one forward and backward per upstream weight
    out = _output(fn, inputs)
    xp, shape = out.xp, out.shape
    finite_out = xp.isfinite(out.data)  # outputs that take part in the check
    if not nonfinite_ok and not bool(finite_out.all()):
        first, count = _first(~finite_out)
        raise GradcheckError(
            f"gradcheck: fn's output is not finite at {count} element(s), the first at "
            f"{_unravel(first, shape)} ({float(out.data.reshape(-1)[first])}); pass nonfinite_ok=True if "
            f"non-finite values are expected there")
    weights = [xp.where(finite_out, w, 0.0) for w in _upstream_weights(shape, seed, out.device)]
    analytic = []
    for k, w in enumerate(weights):
        for _, t in checked:
            t.grad = None
        if k:
            out = _output(fn, inputs)  # the first graph was freed by its backward
        if out.requires_grad:  # else no gradient reaches any input: the analytic one is 0
            try:
                out.backward(w)  # (backward copies w: an op that wrote into its dy cannot change it)
            except BackwardError as e:
                raise GradcheckError(f"gradcheck: {e}") from e
        analytic.append([_analytic_grad(t) for _, t in checked])

    # ---- numeric: one column of the Jacobian per checked element, contracted with each weight
    def values() -> Any:  # a copy: the output may be a view of the input we are about to move again
        with no_grad():
            return _output(fn, inputs).data.copy()

    u = float(xp.finfo(out.dtype).eps) if out.dtype.kind == "f" else 0.0
    for c, (name, t) in enumerate(checked):
        flat = t.data.reshape(-1)  # a view: writing into it moves t
        numeric = [xp.zeros(flat.size) for _ in weights]
        floor = [xp.zeros(flat.size) for _ in weights]
        for j in range(flat.size):
            orig = float(flat[j])
            up, down = orig + eps, orig - eps
            flat[j] = up
            plus = values()
            flat[j] = down
            minus = values()
            flat[j] = orig
            with warnings.catch_warnings():  # inf - inf where the output is not finite: NaN, left out below
                warnings.simplefilter("ignore", RuntimeWarning)
                column = (plus - minus) / (up - down)  # d f / d x_j, output-shaped; up - down is exact
            moved = finite_out & (plus != minus)
            size = xp.where(moved, xp.maximum(xp.abs(plus), xp.abs(minus)), 0.0)
            for k, w in enumerate(weights):
                contribution = xp.where(finite_out, column * w, 0.0)
                numeric[k][j] = contribution.sum()
                floor[k][j] = ROUNDOFF_SAFETY * u * (xp.abs(w) * size).sum() / (up - down)
                if not nonfinite_ok and not math.isfinite(float(numeric[k][j])):
                    bad, _ = _first(~xp.isfinite(contribution))
                    raise GradcheckError(
                        f"gradcheck: the numeric gradient of {name} (shape {t.shape}) is not finite at element "
                        f"{_unravel(j, t.shape)}: moving it by ±eps makes output element {_unravel(bad, shape)} "
                        f"{float(plus.reshape(-1)[bad])} and {float(minus.reshape(-1)[bad])}; pass "
                        f"nonfinite_ok=True if non-finite values are expected there")
        for k in range(len(weights)):
            _compare(name, t.shape, analytic[k][c].reshape(-1), numeric[k], floor[k], atol, rtol, k, nonfinite_ok)


def _analytic_grad(t: Tensor) -> Any:
    """A copy of ``t.grad`` after backward (0 when none arrived). Its shape and dtype are t's:
    ``Tensor.backward`` checked every gradient on the way (BackwardError, reported above)."""
    if t.grad is None:
        return t.xp.zeros(t.shape)
    return t.grad.copy()


def _compare(name: str, shape: tuple[int, ...], analytic: Any, numeric: Any, floor: Any, atol: float,
             rtol: float, k: int, nonfinite_ok: bool) -> None:
    """Raise GradcheckError at the worst element of flat ``analytic`` vs ``numeric`` (weight k)."""
    xp = backend.get_array_module(analytic)
    finite_a, finite_n = xp.isfinite(analytic), xp.isfinite(numeric)
    one_sided = finite_a != finite_n if nonfinite_ok else ~(finite_a & finite_n)
    if bool(one_sided.any()):
        j, count = _first(one_sided)
        raise GradcheckError(
            f"gradcheck: the gradient of {name} (shape {shape}) is not finite at {count} element(s), the first "
            f"at {_unravel(j, shape)}: analytic {float(analytic[j])}, numeric {float(numeric[j])}"
            + ("" if nonfinite_ok else "; pass nonfinite_ok=True if non-finite values are expected there"))
    both = finite_a & finite_n  # with nonfinite_ok, elements non-finite on both sides are left out
    analytic, numeric, floor = (xp.where(both, v, 0.0) for v in (analytic, numeric, floor))
    excess = xp.abs(analytic - numeric) - (atol + rtol * xp.abs(numeric) + floor)
    j = int(xp.argmax(excess))
    if float(excess[j]) > 0:
        raise GradcheckError(
            f"gradcheck failed for {name} (shape {shape}) at element {_unravel(j, shape)}: "
            f"analytic {float(analytic[j]):.10g}, numeric {float(numeric[j]):.10g} "
            f"(atol={atol}, rtol={rtol}, roundoff floor={float(floor[j]):.3g}, upstream weight {k + 1} of 2)")
