"""When a twin runs its fast path: ``fast.disabled()`` and ``fast.enabled(array)``.

Which model and optimizer run is chosen where they are built (``fast.GPT`` or ``nn.GPT``,
``fast.AdamW`` or ``optim.AdamW``). A twin then checks here, each call, whether to run its
tricks or hand over to its reference:

    with fast.disabled(): ...   inside, every twin runs the plain reference ops (tests, debugging)
    fast.is_disabled()          True inside ``fast.disabled()``
    fast.enabled(array)         True on NumPy arrays, unless inside ``fast.disabled()``

On CuPy the GPT twin runs the reference ops: its tricks (tiles that fit a CPU cache, BLAS row
sums, copies that suit OpenBLAS) are CPU tricks, and a GPU runs the plain ops well. AdamW's flat
buffers serve every device (``is_disabled()`` alone decides), since on a GPU too one update over
one buffer is a dozen kernel launches where the reference's is a dozen per parameter.
"""

from __future__ import annotations

from typing import Any, Callable

from minigpt import backend

_disabled_depth = 0


class disabled:
    """Context manager (or decorator), like ``no_grad``: inside it every model forward and
    optimizer step runs the plain reference ops of ``minigpt.functional`` and ``minigpt.optim``,
    the code a learner reads and can step through with a debugger."""

    def __enter__(self) -> None:
        global _disabled_depth
        _disabled_depth += 1

    def __exit__(self, *exc: Any) -> None:
        global _disabled_depth
        _disabled_depth -= 1

    def __call__(self, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)
        return wrapper


def is_disabled() -> bool:
    """Whether this runs inside ``fast.disabled()``."""
    return _disabled_depth > 0


def enabled(array: Any) -> bool:
    """Whether a CPU twin should run its fast path for ``array``: NumPy, and not inside ``disabled()``."""
    return not is_disabled() and backend.get_array_module(backend.unwrap(array)) is backend.numpy
