"""The backward pass of GELU, in the tanh form GPT-2 uses.

forward:   y = 0.5 x (1 + tanh(u)),   u = k (x + a x^3),   k = sqrt(2 / pi), a = 0.044715

Write ``backward``: given dy = dL/dy (the shape of x), return dx = dy * gelu'(x). The product
rule gives two terms: one from the x in front, one through tanh(u) and u(x).

Check it:  minigpt check gelu          (the reference: minigpt/functional.py, class GELU)
"""

import math

import numpy as np

K, A = math.sqrt(2 / math.pi), 0.044715


def forward(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(K * (x + A * x**3)))


def backward(x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # ---- your code: return dx (the shape of x) ----
    raise NotImplementedError("write backward")
