"""The bigram language model: the lecture notebook's first model.

Each token looks up a row of a (V, V) table and reads it as the logits of the next token:
the prediction depends on the current character only. Trained on Tiny Shakespeare it
reaches a loss of about 2.5 (uniform guessing is ln 65 ≈ 4.17).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from minigpt import backend
from minigpt import functional as F
from minigpt.nn.gpt import generate_loop
from minigpt.nn.layers import Embedding
from minigpt.nn.module import Module
from minigpt.tensor import Tensor, no_grad


class BigramLanguageModel(Module):
    """logits for the next token = token_embedding_table[current token]."""

    def __init__(self, vocab_size: int) -> None:
        if int(vocab_size) < 1:
            raise ValueError(f"vocab_size must be a positive integer, got {vocab_size}")
        self.vocab_size = int(vocab_size)
        self.token_embedding_table = Embedding(vocab_size, vocab_size)

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) -> logits (B, T, V) and loss None; with targets (B, T), as in the notebook,
        logits viewed as (B*T, V) and their mean cross-entropy."""
        weight = self.token_embedding_table.weight
        idx = backend.move(backend.unwrap(idx), weight.device)
        logits = self.token_embedding_table(idx)  # (B, T) -> (B, T, V)
        if targets is None:
            return logits, None
        B, T, V = logits.shape
        logits = logits.reshape(B * T, V)
        targets = backend.move(backend.unwrap(targets), weight.device).reshape(B * T)
        return logits, F.cross_entropy(logits, targets)

    @no_grad()
    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, on_token: Callable[[Any], None] | None = None,
                 vocab_limit: int | None = None) -> Any:
        """Sample ``max_new_tokens`` tokens after idx (B, T) -> (B, T + max_new_tokens).
        Only the last token matters to a bigram, so only it is fed in."""
        return generate_loop(idx, max_new_tokens, lambda ids: self(ids[:, -1:])[0].data[:, -1, :],
                             temperature, top_k, top_p, on_token, vocab_limit)
