"""The layers: ``Linear``, ``Embedding``, ``LayerNorm``, ``Dropout``.

Each holds its parameters and calls the op in ``minigpt.functional`` that does the math
(and its hand-written backward). Initialisation follows torch's defaults; the GPT
re-initialises its own weights as GPT-2 does. Parameters start as float32 on the CPU;
``module.to(device, dtype)`` moves them.
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt import functional as F
from minigpt.nn.module import Module, Parameter
from minigpt.tensor import Tensor


def _uniform(shape: tuple[int, ...], bound: float) -> Parameter:
    """U(-bound, bound) drawn from minigpt's generator."""
    return Parameter(backend.generator().uniform(-bound, bound, shape).astype(backend.DEFAULT_DTYPE))


def _normal(shape: tuple[int, ...], std: float = 1.0) -> Parameter:
    """N(0, std²) drawn from minigpt's generator."""
    return Parameter((backend.generator().standard_normal(shape) * std).astype(backend.DEFAULT_DTYPE))


def _constant(shape: tuple[int, ...], value: float) -> Parameter:
    return Parameter(backend.xp_for("cpu").full(shape, value, dtype=backend.DEFAULT_DTYPE))


class Linear(Module):
    """y = x @ weight.T + bias, weight (out_features, in_features), as torch.nn.Linear.

    Init as torch: weight and bias ~ U(-1/√in, 1/√in).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.weight = _uniform((out_features, in_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        shape = getattr(x, "shape", ())
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) takes inputs whose last axis is "
                             f"{self.in_features}, got shape {tuple(shape)}")
        return F.linear(x, self.weight, self.bias)  # (*, in) -> (*, out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A (num_embeddings, embedding_dim) table; row i is the vector of token i. Init N(0, 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = _normal((num_embeddings, embedding_dim))

    def forward(self, idx: Any) -> Tensor:
        return F.embedding(idx, self.weight)  # (*) -> (*, C)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer norm over the last axis with learnable weight (ones) and optional bias (zeros)."""

    def __init__(self, dim: int, bias: bool = True, eps: float = 1e-5) -> None:
        self.dim, self.eps = dim, eps
        self.weight = _constant((dim,), 1.0)
        self.bias = _constant((dim,), 0.0) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class Dropout(Module):
    """Inverted dropout with probability p while training; the identity in eval mode."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
