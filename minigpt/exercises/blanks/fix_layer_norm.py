"""Find the bug: this layer norm backward has one mistake. Fix it until the check passes.

forward:   xhat = (x - mean) / sqrt(var + eps) over the last axis, y = xhat * w + b
           x (N, C), w (C,), b (C,)  ->  y (N, C)

The backward below returns the right shapes, and runs. Check it, read what the checker says, and
compare with docs/derivations.md, section 'Layer norm'.

Check it:  minigpt check fix_layer_norm
"""

import numpy as np

EPS = 1e-5


def forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    xhat = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + EPS)
    return xhat * w + b


def backward(x: np.ndarray, w: np.ndarray, b: np.ndarray, dy: np.ndarray):
    std = np.sqrt(x.var(-1, keepdims=True) + EPS)
    xhat = (x - x.mean(-1, keepdims=True)) / std
    dxhat = dy * w
    dx = dxhat / std  # the gradient that reaches x
    dw = (dy * xhat).sum(axis=0)
    db = dy.sum(axis=0)
    return dx, dw, db
