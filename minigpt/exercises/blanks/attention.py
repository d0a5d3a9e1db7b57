"""One head of causal self-attention, forward and backward.

forward:   scores = q @ k.T / sqrt(hs)                  q, k, v (T, hs) -> scores (T, T)
           scores[i, j] = -inf for j > i                (position i may not read the future)
           att = softmax(scores) along each row         each row sums to 1; 0 above the diagonal
           y = att @ v                                  -> y (T, hs)

Write ``forward`` (the mask goes on the scores, before the softmax) and ``backward``: given
dy = dL/dy (T, hs), return (dq, dk, dv). Go back line by line: y = att @ v gives datt and dv;
softmax's backward gives dscores from datt and att; scores = q @ k.T * scale gives dq and dk.
The masked scores are constants: no gradient flows into them.

Check it:  minigpt check attention     (the reference: minigpt/functional.py, class ScaledDotProductAttention)
"""

import numpy as np


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    # ---- your code: return y (T, hs) ----
    raise NotImplementedError("write forward")


def backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, dy: np.ndarray):
    # ---- your code: return dq, dk, dv, each (T, hs) ----
    raise NotImplementedError("write backward")
