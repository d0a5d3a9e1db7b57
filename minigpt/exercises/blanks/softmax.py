"""Softmax along the last axis, forward and backward.

forward:   y[i] = exp(x[i]) / sum_j exp(x[j])        over the last axis; x (N, V) -> y (N, V)

Write ``forward`` so that it never overflows: logits of 1000 are ordinary in a trained model, and
exp(1000) is inf in floating point. (Subtracting any constant from a row changes nothing.)

Write ``backward``: given y (the forward's output) and dy = dL/dy, return dx = dL/dx. Each y[i]
depends on every x[j]: the partial derivative of y[i] by x[j] is y[i] (delta_ij - y[j]).
dx[j] = sum over i of dy[i] times that.

Check it:  minigpt check softmax       (the reference: minigpt/functional.py, class Softmax)
"""

import numpy as np


def forward(x: np.ndarray) -> np.ndarray:
    # ---- your code: return y, the softmax of each row of x ----
    raise NotImplementedError("write forward")


def backward(y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # ---- your code: return dx (the shape of y) ----
    raise NotImplementedError("write backward")
