"""From a bigram table to a GPT, one idea at a time: the steps of docs/walkthrough.md.

    python examples/walkthrough.py data          # the text, its 65 characters, encoding, the split, a batch
    python examples/walkthrough.py averaging     # "attend to the past" three ways: loops, tril matmul, softmax
    python examples/walkthrough.py bigram        # then train each model and print its val loss:
    python examples/walkthrough.py embed         #   token + position embeddings, a linear head
    python examples/walkthrough.py head          #   + one head of causal self-attention
    python examples/walkthrough.py multihead     #   + several heads side by side
    python examples/walkthrough.py ffwd          #   + a feed-forward layer after attention
    python examples/walkthrough.py residual      #   + 4 blocks with residual connections
    python examples/walkthrough.py layernorm     #   + layer norm before each part and at the end
    python examples/walkthrough.py gpt           #   the same as minigpt.nn.GPT (GPT-2's init, tied weights), what
                                                 #   train_shakespeare.py trains
    python examples/walkthrough.py all           # every step in order

Every model step trains with the same small budget (AdamW at a constant 1e-3, batch 16 x block 32,
64 channels) and reports its loss over the whole validation split. Data: --data PATH (or URL), else
$MINIGPT_DATA, else the Tiny Shakespeare shipped inside minigpt.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

import minigpt
from minigpt import Tensor, cli, nn, optim
from minigpt import functional as F
from minigpt.data import CharTokenizer, get_batch, load_source, train_val_split
from minigpt.train import split_loss

# Shape letters: B batch, T time, C channels (n_embd), V vocab, hs head size.
BLOCK_SIZE, BATCH_SIZE, N_EMBD, N_HEAD, N_LAYER = 32, 16, 64, 4, 4
MAX_ITERS, LEARNING_RATE, SEED = 1500, 1e-3, 1337


# ----------------------------------------------------------------------------- the data
def load(data: str | None = None):
    text = load_source(data)
    tok = CharTokenizer.from_text(text)
    train, val = train_val_split(tok.encode(text))
    return text, tok, train, val


def step_data(data: str | None) -> None:
    text, tok, train, val = load(data)
    print(f"{len(text):,} characters; the first 100:\n{text[:100]}")
    print(f"vocabulary: {tok.vocab_size} characters: {tok.chars!r}")
    print(f"encode('Hello, world!') = {tok.encode('Hello, world!').tolist()}")
    print(f"split 90/10: {len(train):,} training and {len(val):,} validation tokens")
    x, y = get_batch(train, 4, 8, np.random.default_rng(SEED))
    print(f"a batch of 4 chunks of 8: x =\n{x}\ny (x shifted by one: the next character at each position) =\n{y}")
    for t in range(8):
        print(f"  when the input is {x[0, :t + 1].tolist()} the target is {y[0, t]}")


# ----------------------------------------------------------------------------- the averaging trick
def step_averaging(data: str | None = None) -> None:
    """Each position t gets the mean of positions 0..t, computed three ways that agree."""
    B, T, C = 4, 8, 2
    x = np.random.default_rng(SEED).standard_normal((B, T, C)).astype(np.float32)
    # 1. loops
    xbow = np.zeros((B, T, C), dtype=np.float32)
    for b in range(B):
        for t in range(T):
            xbow[b, t] = x[b, : t + 1].mean(axis=0)
    # 2. a lower-triangular matrix whose rows sum to 1: (T, T) @ (B, T, C) -> (B, T, C)
    wei = np.tril(np.ones((T, T), dtype=np.float32))
    wei /= wei.sum(axis=1, keepdims=True)
    xbow2 = (Tensor(wei) @ Tensor(x)).data
    # 3. softmax of a masked matrix of zeros: -inf where a position may not look (the future)
    mask = np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf).astype(np.float32)
    wei3 = F.softmax(Tensor(np.zeros((T, T), dtype=np.float32)) + mask, axis=-1)
    xbow3 = (wei3 @ Tensor(x)).data
    print("weights of way 3 (rows: positions, columns: what they average):\n", np.round(wei3.data, 3))
    print("x[0] =\n", x[0], "\nmean of the past, x[0] =\n", xbow[0])
    assert np.allclose(xbow, xbow2, atol=1e-6) and np.allclose(xbow, xbow3, atol=1e-6)
    print("the three ways agree. Way 3 is attention with equal scores; self-attention makes the scores data-dependent.")


# ----------------------------------------------------------------------------- the models, in order
def causal_mask(T: int) -> np.ndarray:
    return np.where(np.tril(np.ones((T, T), dtype=bool)), 0.0, -np.inf).astype(np.float32)  # (T, T)


class Head(nn.Module):
    """One head of causal self-attention, as in the lecture: every position emits a query ("what
    am I looking for"), a key ("what do I contain") and a value ("what I give if chosen")."""

    def __init__(self, head_size: int) -> None:
        self.key = nn.Linear(N_EMBD, head_size, bias=False)
        self.query = nn.Linear(N_EMBD, head_size, bias=False)
        self.value = nn.Linear(N_EMBD, head_size, bias=False)
        self.head_size = head_size

    def forward(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        k, q, v = self.key(x), self.query(x), self.value(x)  # each (B, T, hs)
        wei = q @ k.transpose(0, 2, 1) * self.head_size**-0.5  # (B, T, hs) @ (B, hs, T) -> (B, T, T)
        wei = F.softmax(wei + causal_mask(T), axis=-1)  # the future gets weight 0
        return wei @ v  # (B, T, T) @ (B, T, hs) -> (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, their outputs side by side, then a projection."""

    def __init__(self, n_head: int, head_size: int) -> None:
        self.heads = nn.ModuleList([Head(head_size) for _ in range(n_head)])
        self.proj = nn.Linear(n_head * head_size, N_EMBD)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(minigpt.cat([h(x) for h in self.heads], axis=-1))  # (B, T, nh * hs) -> (B, T, C)


class FeedForward(nn.Module):
    """Computation per position after communication: C -> 4C -> GELU -> C."""

    def __init__(self) -> None:
        self.fc, self.proj = nn.Linear(N_EMBD, 4 * N_EMBD), nn.Linear(4 * N_EMBD, N_EMBD)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    """Communication then computation, each added to the residual stream x; with ``layer_norm``
    each sees a normalised copy of the stream (pre-LN, as GPT-2)."""

    def __init__(self, layer_norm: bool = False) -> None:
        self.sa, self.ffwd = MultiHeadAttention(N_HEAD, N_EMBD // N_HEAD), FeedForward()
        self.ln1 = nn.LayerNorm(N_EMBD) if layer_norm else None
        self.ln2 = nn.LayerNorm(N_EMBD) if layer_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.sa(self.ln1(x) if self.ln1 else x)
        return x + self.ffwd(self.ln2(x) if self.ln2 else x)


class LanguageModel(nn.Module):
    """Token + position embeddings -> (what the step adds) -> logits. ``body`` builds the middle."""

    def __init__(self, vocab_size: int, body: str) -> None:
        self.token_embedding_table = nn.Embedding(vocab_size, N_EMBD)
        self.position_embedding_table = nn.Embedding(BLOCK_SIZE, N_EMBD)
        self.body = body
        if body == "head":
            self.sa = Head(N_EMBD)
        elif body in ("multihead", "ffwd"):
            self.sa = MultiHeadAttention(N_HEAD, N_EMBD // N_HEAD)
            if body == "ffwd":
                self.ffwd = FeedForward()
        elif body in ("residual", "layernorm"):
            self.blocks = nn.ModuleList([Block(layer_norm=body == "layernorm") for _ in range(N_LAYER)])
            self.ln_f = nn.LayerNorm(N_EMBD) if body == "layernorm" else None
        self.lm_head = nn.Linear(N_EMBD, vocab_size)

    def forward(self, idx, targets=None):
        idx = np.asarray(idx)
        T = idx.shape[1]
        x = self.token_embedding_table(idx) + self.position_embedding_table(np.arange(T))  # (B, T, C)
        if self.body in ("head", "multihead", "ffwd"):
            x = self.sa(x)
        if self.body == "ffwd":
            x = self.ffwd(x)
        if self.body in ("residual", "layernorm"):
            for block in self.blocks:
                x = block(x)
            if self.ln_f is not None:
                x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


def build(step: str, vocab_size: int) -> nn.Module:
    minigpt.manual_seed(SEED)
    if step == "bigram":
        return nn.BigramLanguageModel(vocab_size)
    if step == "gpt":
        return nn.GPT(nn.GPTConfig(block_size=BLOCK_SIZE, vocab_size=vocab_size, n_layer=N_LAYER,
                                   n_head=N_HEAD, n_embd=N_EMBD, dropout=0.0))
    return LanguageModel(vocab_size, step)


def train_step(step: str, data: str | None = None, max_iters: int = MAX_ITERS) -> float:
    """Train the model of ``step`` and return its loss over the whole validation split."""
    _, tok, train, val = load(data)
    model = build(step, tok.vocab_size)
    opt = optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    rng = np.random.default_rng(SEED)
    t0 = time.time()
    for it in range(max_iters):
        x, y = get_batch(train, BATCH_SIZE, BLOCK_SIZE, rng)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it % 500 == 0:
            print(f"  {step}: iter {it}, train loss {loss.item():.4f}")
    val_loss = split_loss(model, val, BLOCK_SIZE)
    print(f"{step}: {model.num_params():,} parameters, {max_iters} iterations in {time.time() - t0:.0f} s, "
          f"val loss over the whole split {val_loss:.4f} (uniform guessing: {math.log(tok.vocab_size):.4f})")
    return val_loss


MODEL_STEPS = ["bigram", "embed", "head", "multihead", "ffwd", "residual", "layernorm", "gpt"]


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["data", "averaging", *MODEL_STEPS, "all"])
    p.add_argument("--data", default=None, help="text file or URL (default: $MINIGPT_DATA, else the packaged Tiny Shakespeare)")
    p.add_argument("--max_iters", type=int, default=MAX_ITERS)
    args = p.parse_args(argv)
    if args.max_iters < 1:
        raise ValueError(f"--max_iters must be a positive integer, got {args.max_iters}")
    steps = ["data", "averaging", *MODEL_STEPS] if args.step == "all" else [args.step]
    for step in steps:
        if step == "data":
            step_data(args.data)
        elif step == "averaging":
            step_averaging()
        else:
            train_step(step, args.data, args.max_iters)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
