"""What every tokenizer shares: turning whatever holds token ids into a list of Python ints."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from minigpt import backend


def ids_list(ids: Iterable[int] | Any) -> list[int]:
    """Token ids from a list, a NumPy or CuPy array or a Tensor, as a flat list of ints."""
    ids = backend.unwrap(ids)
    if hasattr(ids, "shape"):
        return backend.to_numpy(ids).reshape(-1).tolist()
    return [int(i) for i in ids]
