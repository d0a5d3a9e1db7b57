"""Multi-head causal self-attention: n_head heads side by side, forward and backward.

q, k, v (T, C), C = n_head * hs. Head h reads columns h*hs .. (h+1)*hs - 1 of q, k and v and runs
one head of causal attention (the ``attention`` exercise) with scale 1/sqrt(hs); the heads' outputs
(T, hs) are put side by side again, head h in the same columns: y (T, C).

Write ``forward`` and ``backward``: given dy = dL/dy (T, C), return (dq, dk, dv), each (T, C).
Each head's gradients go back to its own columns. (In a GPT the split is a reshape (T, C) ->
(T, nh, hs) and a transpose -> (nh, T, hs): every head a (T, hs) matrix of its own.)

Check it:  minigpt check multihead     (the reference: minigpt/nn/gpt.py, CausalSelfAttention)
"""

import numpy as np


def forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int) -> np.ndarray:
    # ---- your code: return y (T, C) ----
    raise NotImplementedError("write forward")


def backward(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, dy: np.ndarray):
    # ---- your code: return dq, dk, dv, each (T, C) ----
    raise NotImplementedError("write backward")
