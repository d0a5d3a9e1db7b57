"""The one switch between the fast twins and the reference ops.

    fast.enabled(array)   True on NumPy arrays, unless inside ``fast.disabled()``
    with fast.disabled(): ...   everything inside runs the plain reference ops

On CuPy the reference ops run: the twins' tricks (tiles that fit a CPU cache, BLAS row sums,
copies that suit OpenBLAS) are CPU tricks, and a GPU runs the plain ops well. One twin serves
both: AdamW over flat buffers (``on_every_device()``), since on a GPU too one update over one
buffer is a dozen kernel launches where the reference's is a dozen per parameter.
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


def enabled(array: Any) -> bool:
    """Whether the fast twins should run for ``array``: NumPy, and not inside ``disabled()``."""
    return on_every_device() and backend.get_array_module(backend.unwrap(array)) is backend.numpy


def on_every_device() -> bool:
    """Whether a twin that serves every device (AdamW's flat buffers) should run: not inside ``disabled()``."""
    return _disabled_depth == 0
