"""Write a gradient check's heart: the numerical gradient by central differences.

For a function f of an array x that returns a float, the derivative along element i is about
    (f(x + h e_i) - f(x - h e_i)) / (2 h)
where e_i is 1 at element i and 0 elsewhere, and h is small (the default 1e-6). This central
difference is exact for quadratics and its error shrinks as h^2; the one-sided
(f(x + h e_i) - f(x)) / h errs by about h times the second derivative.

Write ``numerical_gradient(f, x, h)``: the array of these derivatives, of x's shape. Do not leave x
changed: put every element back after nudging it. (minigpt/gradcheck.py compares such a gradient
with the hand-written backward, along a random upstream gradient.)

Check it:  minigpt check numerical_gradient    (the reference: minigpt/gradcheck.py)
"""

import numpy as np


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    # ---- your code: return the gradient of f at x (x's shape), by central differences ----
    raise NotImplementedError("write numerical_gradient")
