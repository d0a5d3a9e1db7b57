"""One step of AdamW, as PyTorch's torch.optim.AdamW takes it.

For a parameter p with gradient g, moments m and v (arrays of p's shape), at step t = 1, 2, ...:
    decoupled weight decay:  p <- p * (1 - lr * weight_decay)
    first moment:            m <- beta1 * m + (1 - beta1) * g
    second moment:           v <- beta2 * v + (1 - beta2) * g^2
    bias correction:         m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)
    update:                  p <- p - lr * m_hat / (sqrt(v_hat) + eps)

Write ``step``: return the new (p, m, v); do not change the arrays you are given.

Check it:  minigpt check adamw         (the reference: minigpt/optim.py, class AdamW)
"""

import numpy as np


def step(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int, lr: float,
         beta1: float, beta2: float, eps: float, weight_decay: float):
    # ---- your code: return the new p, m, v ----
    raise NotImplementedError("write step")
