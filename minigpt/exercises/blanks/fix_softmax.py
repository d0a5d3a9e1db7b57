"""Find the bug: this softmax has one mistake, in its backward. Fix it until the check passes.

forward:   y = exp(x - max x) / sum exp(x - max x) along the last axis; x (N, V) -> y (N, V)

The code below runs and returns the right shapes. Check it, read what the checker says, and
compare with docs/derivations.md, section 'Softmax'.

Check it:  minigpt check fix_softmax
"""

import numpy as np


def forward(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return y * dy  # dL/dx
