"""How an exercise is checked: run the learner's functions, compare them with minigpt's reference
ops and with the project's gradcheck, and say precisely what is wrong.

A check is a function of the learner's module that raises :class:`Mistake` at the first thing
wrong, with a message a learner can act on: not implemented yet; a wrong shape (expected against
got); a wrong value (the largest error and where); and, where the wrong answer is one that
learners often give, its name ("the gradient is transposed").
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import numpy as np

from minigpt.gradcheck import GradcheckError, gradcheck
from minigpt.tensor import Function, Tensor


class Mistake(Exception):
    """What is wrong with the learner's answer, in words."""


class BadInput(Exception):
    """The exercise file cannot be checked at all: missing, or not Python that imports."""


def load(path: Path) -> ModuleType:
    """The learner's file as a module (run afresh at every check)."""
    if not path.is_file():
        raise BadInput(f"no exercise file at {path} (minigpt exercises copies the blanks out)")
    spec = importlib.util.spec_from_file_location(f"minigpt_exercise_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any error in the learner's file: one line
        raise BadInput(f"{path} does not import: {type(e).__name__}: {e}") from e
    return module


def call(module: ModuleType, name: str, *args: Any) -> Any:
    """``module.name(*args)``; a Mistake that says so when it is not written yet, raises, exits, or
    changes one of its arguments in place (it is given copies, compared afterwards)."""
    fn = getattr(module, name, None)
    if fn is None:
        raise Mistake(f"{name} is missing: the file must define def {name}(...)")
    given = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    try:
        with np.errstate(all="ignore"):
            result = fn(*given)
    except NotImplementedError:
        raise Mistake(f"{name} is not implemented yet: write its body where the file says") from None
    except SystemExit:
        raise Mistake(f"{name} called exit(): return the result instead") from None
    except Exception as e:  # noqa: BLE001 - the learner's bug, reported as a finding
        raise Mistake(f"{name} raised {type(e).__name__}: {e}") from e
    for i, (before, after) in enumerate(zip(args, given)):
        if isinstance(before, np.ndarray) and not np.array_equal(before, after, equal_nan=True):
            raise Mistake(f"{name} changes its argument {i + 1} in place: leave the inputs as they are and return "
                          f"new arrays (the caller may still need them)")
    return result


def where(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def same(what: str, got: Any, expected: np.ndarray, known: Sequence[tuple[str, Any]] = (),
         rtol: float = 1e-6, atol: float = 1e-8) -> None:
    """Raise a Mistake unless ``got`` equals ``expected`` (shape, then values). ``known`` pairs the
    name of a common mistake with the answer it gives: a wrong ``got`` equal to one is named."""
    if getattr(got, "dtype", None) is not None and got.dtype.kind == "c":
        raise Mistake(f"{what} holds complex numbers: everything here is real")
    if getattr(got, "dtype", None) is not None and got.dtype.kind == "f" and got.dtype.itemsize < 8:
        raise Mistake(f"{what} is {got.dtype}: compute in float64, the inputs' dtype (a cast loses precision)")
    try:
        got_arr = np.asarray(got, dtype=np.float64) if got is not None else None
    except (TypeError, ValueError) as e:
        raise Mistake(f"{what} is not an array of numbers: {e}") from None
    named = next((name for name, wrong in known if wrong is not None and got_arr is not None
                  and np.shape(wrong) == got_arr.shape and np.allclose(got_arr, wrong, rtol=1e-6, atol=1e-9)), None)
    hint = f": {named}" if named else ""
    if got_arr is None:
        raise Mistake(f"{what} is None")
    if got_arr.shape != expected.shape:
        raise Mistake(f"{what} has shape {got_arr.shape}, expected {expected.shape}{hint}")
    if not np.all(np.isfinite(got_arr)) and np.all(np.isfinite(expected)):
        bad = tuple(np.argwhere(~np.isfinite(got_arr))[0])
        at = f" at {where(bad)}" if bad else ""
        raise Mistake(f"{what} holds {got_arr[bad]}{at}, expected {expected[bad]:.6g}{hint}")
    err = np.abs(got_arr - expected)
    if not np.all(err <= atol + rtol * np.abs(expected)):
        worst = np.unravel_index(np.argmax(err), err.shape) if err.ndim else ()
        at = f" at {where(worst)}" if worst else ""
        raise Mistake(f"{what} is wrong: the largest error is {err[worst]:.3g}{at} "
                      f"(got {got_arr[worst]:.6g}, expected {expected[worst]:.6g}){hint}")


def consistent(forward: Callable[..., Any], backward: Callable[..., Any], inputs: list[np.ndarray],
               grad_of: Sequence[int], names: Sequence[str]) -> None:
    """minigpt.gradcheck of the learner's backward against central differences of the learner's
    forward (float64, a random upstream gradient): the two must be one function and its derivative."""

    class Learner(Function):
        def forward(self, *arrays: Any) -> Any:
            self.saved = arrays
            return np.asarray(forward(*arrays), dtype=np.float64)

        def backward(self, dy: Any) -> Any:
            grads = backward(*self.saved, dy)
            grads = tuple(grads) if isinstance(grads, (tuple, list)) else (grads,)
            out: list[Any] = [None] * len(self.saved)
            for i, g in zip(grad_of, grads):
                out[i] = np.asarray(g, dtype=np.float64)
            return tuple(out)

    def check_at(arrays: list[np.ndarray]) -> None:
        tensors = [Tensor(a, requires_grad=i in grad_of) if a.dtype.kind == "f" else a for i, a in enumerate(arrays)]
        with np.errstate(all="ignore"):
            gradcheck(lambda *ts: Learner.apply(*ts), tensors)

    try:
        check_at(inputs)
        for arrays in _more_values(inputs):  # hypothesis's values, where it is installed
            check_at(arrays)
    except GradcheckError as e:
        message = str(e)
        for i, name in enumerate(names):
            message = message.replace(f"input {i}", name)
        raise Mistake(f"gradcheck: {message}") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the learner's code failed inside the check
        raise Mistake(f"during gradcheck your code raised {type(e).__name__}: {e}") from None


def _more_values(inputs: list[np.ndarray], examples: int = 8) -> list[list[np.ndarray]]:
    """More float inputs of the same shapes, drawn by hypothesis (derandomized: the same on every
    check) at scales from 0.01 to 30, so that saturated and nearly flat regions are reached too;
    none where hypothesis is not installed (it comes with the test extra)."""
    try:
        from hypothesis import HealthCheck, given, settings  # noqa: PLC0415 - optional
        from hypothesis import strategies as st  # noqa: PLC0415
    except ImportError:
        return []
    drawn: list[list[np.ndarray]] = []

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.01, 0.3, 1.0, 3.0, 30.0]))
    def draw(seed: int, scale: float) -> None:
        rng = np.random.default_rng(seed)
        drawn.append([rng.standard_normal(a.shape) * scale if a.dtype.kind == "f" else a for a in inputs])

    draw()
    return drawn
