"""Cross-entropy of logits against targets, fused with log-softmax: forward and backward.

forward:   loss = mean over n of -log softmax(logits[n])[targets[n]]
           logits (N, V), targets (N,) integers in [0, V)  ->  loss, a float

Write ``forward`` (it must stay finite for logits of 1000) and ``backward``, which returns
dlogits = dL/dlogits (N, V) for L = loss. Fused, the gradient is simple: for one row,
d(-log p[t])/dlogits = p - onehot(t). Then remember the mean.

Check it:  minigpt check cross_entropy (the reference: minigpt/functional.py, class CrossEntropy)
"""

import numpy as np


def forward(logits: np.ndarray, targets: np.ndarray) -> float:
    # ---- your code: return the mean cross-entropy ----
    raise NotImplementedError("write forward")


def backward(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # ---- your code: return dlogits (N, V) ----
    raise NotImplementedError("write backward")
