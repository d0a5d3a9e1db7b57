"""The backward pass of a linear layer.

forward:   y = x @ W.T + b        x (N, in), W (out, in), b (out,)  ->  y (N, out)

Write ``backward``: given dy = dL/dy (N, out), return (dx, dW, db), the gradients of the loss with
respect to x, W and b, each of the shape of its input. Work it out one entry at a time:
y[n, o] = sum_i x[n, i] W[o, i] + b[o], so dL/dx[n, i] = sum_o dy[n, o] W[o, i], and so on. A
parameter used by every row of the batch collects a gradient from every row.

Check it:  minigpt check linear        (the reference: minigpt/functional.py, class Linear)
"""

import numpy as np


def forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    return x @ W.T + b


def backward(x: np.ndarray, W: np.ndarray, b: np.ndarray, dy: np.ndarray):
    # ---- your code: return dx (N, in), dW (out, in), db (out,) ----
    raise NotImplementedError("write backward")
