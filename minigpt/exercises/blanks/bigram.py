"""A bigram model by counting: the probability of the next character given this one, and its loss.

ids (N,) integers in [0, V): a text as token ids.

Write ``probabilities``: P (V, V), where P[i, j] is the probability that token j follows token i:
count every consecutive pair (ids[n], ids[n + 1]), add 1 to every count (so that no pair has
probability 0), and normalise each ROW to sum to 1.

Write ``nll``: the mean negative log-likelihood of the consecutive pairs of ``ids`` under P,
-mean over n of log P[ids[n], ids[n + 1]]. Guessing uniformly gives ln V.

Check it:  minigpt check bigram        (the model learned by gradient descent: minigpt/nn/bigram.py)
"""

import numpy as np


def probabilities(ids: np.ndarray, V: int) -> np.ndarray:
    # ---- your code: return P (V, V) ----
    raise NotImplementedError("write probabilities")


def nll(P: np.ndarray, ids: np.ndarray) -> float:
    # ---- your code: return the mean negative log-likelihood ----
    raise NotImplementedError("write nll")
