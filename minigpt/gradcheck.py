"""Numerical gradient checking: is a hand-written backward right?

For a function f and inputs x, pick a random fixed weight w of f's output shape and
look at the scalar L(x) = sum(f(x) * w). Backprop gives dL/dx analytically (it sends
the upstream gradient w into f's backward). Central differences give it numerically:
    dL/dx_i ≈ (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)
with an error of order eps², in float64. The two must agree element by element.

Why a random w and not plain ``sum(f(x))``: the upstream gradient would then be all ones,
and ones are special: softmax's rows sum to 1, so sum(softmax(x)) is constant and its
gradient is 0 whatever the backward computes; layer norm has the same blind spot.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from minigpt import backend
from minigpt.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """An analytic gradient disagrees with the numerical one."""


def _float64_input(x: Any) -> Any:
    """A float64 copy of a float Tensor (keeping requires_grad); anything else unchanged."""
    if isinstance(x, Tensor) and x.dtype.kind == "f":
        return Tensor(x.xp.ascontiguousarray(x.data, dtype="float64"), requires_grad=x.requires_grad)
    return x


def _output(fn: Callable[..., Any], inputs: Sequence[Any]) -> Tensor:
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
    return out


def gradcheck(fn: Callable[..., Tensor], inputs: Sequence[Any], eps: float = 1e-6,
              atol: float = 1e-5, rtol: float = 1e-3, seed: int = 0) -> bool:
    """Check the analytic gradient of ``sum(fn(*inputs) * w)`` against central differences.

    Float Tensors among ``inputs`` are copied to float64; those with ``requires_grad``
    are checked. ``w`` is drawn once from ``seed`` (not from minigpt's generator, so a
    check does not change the random stream of the code around it). Element i passes when
    |analytic_i - numeric_i| <= atol + rtol * |numeric_i|.

    Returns True, or raises ``GradcheckError`` naming the input and its worst element.
    ``fn`` must compute from its arguments (they are float64 copies of ``inputs``) and be
    deterministic (reseed inside it if it draws random numbers).
    """
    inputs = [_float64_input(x) for x in (inputs if isinstance(inputs, (list, tuple)) else [inputs])]
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True")

    out = _output(fn, inputs)
    xp = out.xp
    rng = backend.xp_for("cpu").random.default_rng(seed)
    w = backend.move(rng.standard_normal(out.shape), out.device)  # float64, fixed for every evaluation

    for i in checked:
        inputs[i].grad = None
    weighted = (out * Tensor(w)).sum()
    if weighted.requires_grad:  # else no gradient reaches any input: the analytic one is 0
        weighted.backward()

    def loss() -> float:
        with no_grad():
            return float((_output(fn, inputs).data * w).sum())

    for i in checked:
        x = inputs[i]
        analytic = x.grad if x.grad is not None else xp.zeros_like(x.data)
        numeric = xp.zeros_like(x.data)
        flat, num_flat = x.data.reshape(-1), numeric.reshape(-1)  # views into x and numeric
        for j in range(flat.size):
            orig = float(flat[j])
            flat[j] = orig + eps
            plus = loss()
            flat[j] = orig - eps
            minus = loss()
            flat[j] = orig
            num_flat[j] = (plus - minus) / (2 * eps)
        err = xp.abs(analytic - numeric) - (atol + rtol * xp.abs(numeric))
        worst = int(xp.argmax(err))
        if float(err.reshape(-1)[worst]) > 0 or not bool(xp.isfinite(analytic).all()):
            where = tuple(int(k) for k in xp.unravel_index(worst, x.shape))
            raise GradcheckError(
                f"gradcheck failed for input {i} (shape {x.shape}) at element {where}: "
                f"analytic {float(analytic.reshape(-1)[worst]):.8g}, "
                f"numeric {float(num_flat[worst]):.8g} (atol={atol}, rtol={rtol})")
    return True
