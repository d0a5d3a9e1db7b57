"""The averaging trick: every position t gets the mean of positions 0..t, two ways.

x (B, T, C) -> out (B, T, C), out[b, t] = x[b, :t + 1].mean(axis=0)   (a loop would do it too)

Write ``with_matmul``: one matrix product with a (T, T) lower-triangular matrix of weights whose
rows sum to 1.

Write ``with_softmax``: the same weights from a softmax: scores of 0 where j <= t and -inf where
j > t (the future), softmax along each row, then the product. This is the shape attention takes,
where the scores are learned instead of 0.

Check it:  minigpt check averaging     (docs/walkthrough.md, the averaging step)
"""

import numpy as np


def with_matmul(x: np.ndarray) -> np.ndarray:
    # ---- your code: return the running means (B, T, C) ----
    raise NotImplementedError("write with_matmul")


def with_softmax(x: np.ndarray) -> np.ndarray:
    # ---- your code: return the running means (B, T, C) ----
    raise NotImplementedError("write with_softmax")
