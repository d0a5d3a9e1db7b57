"""The backward pass of an embedding (a table lookup).

forward:   out = W[idx]           idx (N,) integers in [0, V), W (V, C)  ->  out (N, C)

Write ``backward``: given dout = dL/dout (N, C), return dW = dL/dW (V, C). Row n of out is a copy
of row idx[n] of W, so that row of W receives dout[n]; a token that appears several times in idx
receives the sum of all its rows of dout. Rows of W no token used get zeros.

Check it:  minigpt check embedding     (the reference: minigpt/functional.py, class Embedding)
"""

import numpy as np


def forward(idx: np.ndarray, W: np.ndarray) -> np.ndarray:
    return W[idx]


def backward(idx: np.ndarray, W: np.ndarray, dout: np.ndarray) -> np.ndarray:
    # ---- your code: return dW (V, C) ----
    raise NotImplementedError("write backward")
