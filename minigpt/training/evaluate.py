"""Measuring a model: the loss on random batches, the loss over a whole split, a sample of text.

Each runs the model in eval mode (no dropout) and gives its previous mode back. In a
data-parallel run every rank takes part in the losses (each scores its share, one all-reduce
adds them up) and gets the same number.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy

from minigpt import backend, distributed
from minigpt import functional as F
from minigpt.data import get_batch
from minigpt.tokenizers import Tokenizer
from minigpt.nn import Module
from minigpt.tensor import no_grad
from minigpt.training.config import TrainConfig


@contextlib.contextmanager
def evaluating(model: Module) -> Iterator[Module]:
    """The model in eval mode (no dropout) inside the block, back in its previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@no_grad()
def estimate_loss(model: Module, ids: numpy.ndarray, cfg: TrainConfig, rng: numpy.random.Generator,
                  world: distributed.World = distributed.World()) -> float:
    """Mean loss over ``eval_iters`` random batches (in eval mode: no dropout). In a data-parallel
    run every rank draws the same global batches and scores its slice of each; the N means of a
    batch average to the batch's mean (one all-reduce for all of them)."""
    losses = []
    with evaluating(model):
        for _ in range(cfg.eval_iters):
            x, y = get_batch(ids, cfg.batch_size, cfg.block_size, rng)
            mine = world.shard(len(x))
            losses.append(model(x[mine], y[mine])[1].item())
    return float(numpy.mean(world.sum(numpy.array(losses)) / world.size))  # one process: sum is the identity


@no_grad()
def split_loss(model: Module, ids: Any, block_size: int, batch_rows: int = 64,
               world: distributed.World = distributed.World()) -> float:
    """The mean loss over EVERY token of ``ids``: the text is cut into consecutive chunks of
    block_size (the last may be shorter) and each token is predicted from the tokens before
    it in its chunk, so every one of the len(ids) - 1 targets is scored exactly once.
    In a data-parallel run rank r scores pieces r, r + N, r + 2N... and one all-reduce adds them."""
    ids = backend.to_numpy(ids)  # ids on a GPU: copied to the host once; the model moves each chunk
    n = len(ids) - 1  # number of (input, target) pairs
    full = n // block_size
    starts = numpy.arange(full) * block_size
    pieces = [starts[i:i + batch_rows, None] + numpy.arange(block_size) for i in range(0, full, batch_rows)]  # (rows, T)
    rest = n - full * block_size
    if rest:
        pieces.append(full * block_size + numpy.arange(rest)[None])  # (1, rest)
    total = 0.0
    with evaluating(model):
        for offs in pieces[world.rank::world.size]:
            total += summed_loss(model, ids[offs], ids[offs + 1])
    return world.sum(total) / n


def summed_loss(model: Module, x: numpy.ndarray, y: numpy.ndarray) -> float:
    logits, _ = model(x)  # (rows, T, V); cross-entropy checks y on the host, then copies it over
    return float(F.cross_entropy(logits, y.reshape(logits.shape[:-1]), reduction="sum").item())


def default_prompt(tokenizer: Tokenizer) -> str:
    """"\n" (a new line: where nanoGPT starts its samples) where the vocabulary has it, else the text
    of its first token (a text without a newline has a character vocabulary without one)."""
    try:
        tokenizer.encode("\n")
        return "\n"
    except ValueError:
        return tokenizer.decode([0])


def generate_text(model: Module, tokenizer: Tokenizer, prompt: str, n_tokens: int,
                  temperature: float = 0.8, top_k: int | None = 200) -> str:
    """``prompt`` followed by ``n_tokens`` sampled tokens (characters for a char model), decoded
    (in eval mode: no dropout)."""
    if n_tokens <= 0:
        return prompt
    idx = tokenizer.encode(prompt)[None, :]  # (1, T)
    with evaluating(model):
        out = model.generate(idx, n_tokens, temperature=temperature, top_k=top_k, vocab_limit=tokenizer.vocab_size)
    return tokenizer.decode(backend.to_numpy(out)[0])
