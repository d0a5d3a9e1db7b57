"""The backward pass of layer norm (over the last axis, as GPT-2's).

forward:   mean = x.mean(-1), var = x.var(-1), xhat = (x - mean) / sqrt(var + eps)
           y = xhat * w + b                  x (N, C), w (C,), b (C,)  ->  y (N, C)

Write ``backward``: given dy = dL/dy (N, C), return (dx, dw, db). w and b are used by every row.
Every xhat of a row depends on every x of that row, through the mean and the variance: leave
those out and the gradient is wrong. (A check you can make: each row of dx sums to 0.)

Check it:  minigpt check layer_norm    (the reference: minigpt/functional.py, class LayerNorm)
"""

import numpy as np

EPS = 1e-5


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS)
    return xhat * w + b


def backward(x: np.ndarray, w: np.ndarray, b: np.ndarray, dy: np.ndarray):
    # ---- your code: return dx (N, C), dw (C,), db (C,) ----
    raise NotImplementedError("write backward")
