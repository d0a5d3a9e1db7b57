"""From a bigram table to a GPT, one change at a time: the steps of docs/walkthrough.md.

    python examples/walkthrough.py data          # the text, its 65 characters, encoding, the split, a batch
    python examples/walkthrough.py averaging     # "attend to the past" three ways: loops, tril matmul, softmax
    python examples/walkthrough.py STEP          # train one model step on 3 seeds: loss at init, val loss, a sample
    python examples/walkthrough.py all           # every step in order, then the table of docs/walkthrough.md

The model steps, each changing ONE thing from the step before it:
    bigram     a (V, V) table: the next character's scores read from the current character's row
    embed      the table becomes two learned matrices: a token embedding (V, C) and a linear head (C -> V)
    position   + a position embedding added to the token's
    head       + one head of causal self-attention (head size hs = C = 64)
    multihead  the one head becomes 4 heads of 16 side by side, and a projection
    ffwd       + a feed-forward layer (C -> 4C -> GELU -> C) after attention
    deep       the (attention, feed-forward) pair becomes 4 such blocks, each feeding the next
    residual   + residual connections: each part adds to a stream, x = x + f(x)
    layernorm  + layer norm before each part and at the end (pre-LN, as GPT-2)
    gpt2_init  GPT-2's initialisation: weights N(0, 0.02), residual projections N(0, 0.02/sqrt(2 n_layer)), biases 0
    tied       the head's weight becomes the token table (weight tying), and the head has no bias
    gpt        minigpt.nn.GPT: the same network, with q, k, v packed into one layer (c_attn) that has biases

Every model step trains with the same small budget (AdamW at a constant lr 1e-3 and no weight decay,
1500 iterations of 16 chunks x 32 characters, 64 channels) on each of 3 seeds, and reports its loss
over the whole validation split: mean and standard deviation over the seeds. Data: --data PATH (or
URL), else $MINIGPT_DATA, else the Tiny Shakespeare shipped inside minigpt.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

import minigpt
from minigpt import Tensor, cli, fast, nn, optim
from minigpt import functional as F
from minigpt.data import CharTokenizer, get_batch, load_source, train_val_split
from minigpt.nn.gpt import generate_loop
from minigpt.training.evaluate import split_loss

# Shape letters: B batch, T time, C channels (n_embd), V vocab, nh heads, hs head size.
BLOCK_SIZE, BATCH_SIZE, N_EMBD, N_HEAD, N_LAYER = 32, 16, 64, 4, 4
MAX_ITERS, LEARNING_RATE, SEEDS = 1500, 1e-3, (1337, 1, 2)
SEED = SEEDS[0]  # the data and averaging steps' seed, and the seed whose sample is printed


# ----------------------------------------------------------------------------- the data
@functools.lru_cache(maxsize=2)  # read and encode the text once for every step and seed of a run
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
    # 1. loops. xbow: "x, bag of words", the mean of everything so far (its order forgotten)
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
MODEL_STEPS = ["bigram", "embed", "position", "head", "multihead", "ffwd", "deep", "residual", "layernorm",
               "gpt2_init", "tied", "gpt"]
CHANGES = {  # what each step changes from the one before it (the table's second column)
    "bigram": "a (V, V) table of next-character scores",
    "embed": "the table becomes a token embedding (V, C) and a linear head (C → V)",
    "position": "+ a position embedding (T, C) added to the token's",
    "head": "+ one head of causal self-attention (head size hs = 64)",
    "multihead": "one head becomes 4 heads of 16 and a projection",
    "ffwd": "+ a feed-forward layer (C → 4C → GELU → C) after attention",
    "deep": "4 (attention, feed-forward) blocks, each feeding the next",
    "residual": "+ residual connections, x = x + f(x)",
    "layernorm": "+ layer norm before each part and at the end (pre-LN)",
    "gpt2_init": "GPT-2's init: N(0, 0.02), residual projections N(0, 0.02/√8), biases 0",
    "tied": "the head's weight is the token table (tied), without a bias",
    "gpt": "`minigpt.nn.GPT`: q, k, v packed in one `c_attn` layer, with biases",
}


def has(step: str, feature: str) -> bool:
    """Whether the model of ``step`` has what step ``feature`` added (every step keeps what came before)."""
    return MODEL_STEPS.index(step) >= MODEL_STEPS.index(feature)


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
        scale = self.head_size**-0.5  # 1/√hs
        scores = q @ k.transpose(0, 2, 1) * scale  # (B, T, hs) @ (B, hs, T) -> (B, T, T)
        att = F.softmax(scores + causal_mask(T), axis=-1)  # the lecture's "wei"; the future gets weight 0
        return att @ v  # (B, T, T) @ (B, T, hs) -> (B, T, hs)


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
    """Attention (communication), then, from step ffwd on, a feed-forward layer (computation).
    From step residual on each part adds to the stream x instead of replacing it; from step
    layernorm on each part reads a normalised copy of the stream (pre-LN, as GPT-2)."""

    def __init__(self, step: str) -> None:
        self.sa = Head(N_EMBD) if step == "head" else MultiHeadAttention(N_HEAD, N_EMBD // N_HEAD)
        self.ffwd = FeedForward() if has(step, "ffwd") else None
        self.residual = has(step, "residual")
        self.ln1 = nn.LayerNorm(N_EMBD) if has(step, "layernorm") else None
        self.ln2 = nn.LayerNorm(N_EMBD) if has(step, "layernorm") and self.ffwd else None

    def forward(self, x: Tensor) -> Tensor:
        for part, ln in ((self.sa, self.ln1), (self.ffwd, self.ln2)):
            if part is not None:
                out = part(ln(x) if ln else x)  # (B, T, C)
                x = x + out if self.residual else out
        return x


class LanguageModel(nn.Module):
    """Token (+ position) embeddings -> blocks -> (layer norm) -> logits, as the step says."""

    def __init__(self, vocab_size: int, step: str) -> None:
        self.token_embedding_table = nn.Embedding(vocab_size, N_EMBD)
        self.position_embedding_table = nn.Embedding(BLOCK_SIZE, N_EMBD) if has(step, "position") else None
        n_blocks = (N_LAYER if has(step, "deep") else 1) if has(step, "head") else 0
        self.blocks = nn.ModuleList([Block(step) for _ in range(n_blocks)])
        self.ln_f = nn.LayerNorm(N_EMBD) if has(step, "layernorm") else None
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=not has(step, "tied"))
        if has(step, "tied"):
            self.lm_head.weight = self.token_embedding_table.weight  # one (V, C) table reads and writes tokens
        if has(step, "gpt2_init"):
            self.gpt2_init()

    def gpt2_init(self) -> None:
        """GPT-2's init, as minigpt.nn.GPT's: every weight N(0, 0.02), every bias 0, and the two
        projections that write into the residual stream (attention's and the feed-forward's)
        N(0, 0.02/√(2·n_layer))."""
        rng = minigpt.backend.generator()
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.data[...] = 0
            elif "ln" not in name:  # layer norm's gains stay 1
                std = 0.02 / math.sqrt(2 * N_LAYER) if name.endswith("proj.weight") else 0.02
                p.data[...] = rng.standard_normal(p.shape) * std

    def forward(self, idx, targets=None):
        idx = np.asarray(idx)
        T = idx.shape[1]
        x = self.token_embedding_table(idx)  # (B, T, C)
        if self.position_embedding_table is not None:
            x = x + self.position_embedding_table(np.arange(T))  # + (T, C), the same for every row
        for block in self.blocks:
            x = block(x)
        if self.ln_f is not None:
            x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


def build(step: str, vocab_size: int, seed: int = SEED) -> nn.Module:
    minigpt.manual_seed(seed)
    if step == "bigram":
        return nn.BigramLanguageModel(vocab_size)
    if step == "gpt":  # bias=True: c_attn, c_proj, c_fc and layer norm all have biases
        # nn.GPT's twin, as `minigpt train` builds it: the same model and numbers, trained faster
        return fast.GPT(nn.GPTConfig(block_size=BLOCK_SIZE, vocab_size=vocab_size, n_layer=N_LAYER,
                                   n_head=N_HEAD, n_embd=N_EMBD, dropout=0.0, bias=True))
    return LanguageModel(vocab_size, step)


@dataclass
class StepResult:
    step: str
    seed: int
    params: int
    init_loss: float  # whole-validation-split loss before training
    first_move: float  # mean |change| of the logits of the first batch made by the first AdamW step
    val_loss: float  # whole-validation-split loss after training
    seconds: float
    sample: str


def train_model(step: str, data: str | None = None, max_iters: int = MAX_ITERS, seed: int = SEED,
                sample_chars: int = 120) -> StepResult:
    """Train the model of ``step`` from ``seed`` and measure it (see StepResult)."""
    _, tok, train, val = load(data)
    model = build(step, tok.vocab_size, seed)
    init_loss = split_loss(model, val, BLOCK_SIZE)
    opt = optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)  # no decay: one idea at a time
    rng = np.random.default_rng(seed)
    t0 = time.time()
    first_move = float("nan")
    for it in range(max_iters):
        x, y = get_batch(train, BATCH_SIZE, BLOCK_SIZE, rng)
        logits, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if it == 0:
            with minigpt.no_grad():
                first_move = float(np.abs(model(x)[0].data.reshape(-1) - logits.data.reshape(-1)).mean())
    seconds = time.time() - t0
    val_loss = split_loss(model, val, BLOCK_SIZE)
    minigpt.manual_seed(seed)
    with minigpt.no_grad():
        ids = generate_loop(tok.encode("\n")[None, :], sample_chars,
                            lambda idx: model(idx[:, -BLOCK_SIZE:])[0].data[:, -1, :])  # (1, 1 + sample_chars)
    return StepResult(step, seed, model.num_params(), init_loss, first_move, val_loss, seconds,
                      tok.decode(ids[0]))


def run_step(step: str, data: str | None, max_iters: int, seeds: tuple[int, ...]) -> list[StepResult]:
    results = []
    for seed in seeds:
        r = train_model(step, data, max_iters, seed)
        print(f"{step}, seed {seed}: {r.params:,} parameters, loss at init {r.init_loss:.4f}, first step moves "
              f"the logits by {r.first_move:.4f}, {max_iters} iterations in {r.seconds:.0f} s, val loss {r.val_loss:.4f}")
        results.append(r)
    losses = [r.val_loss for r in results]
    spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
    print(f"{step}: whole-split val loss {statistics.mean(losses):.4f} ± {spread:.4f} over {len(seeds)} seed(s) "
          f"(uniform guessing: ln 65 = {math.log(65):.4f}); sample (seed {seeds[0]}):\n{results[0].sample}\n")
    return results


def table(rows: list[list[StepResult]]) -> str:
    """The table of docs/walkthrough.md, from every step's results."""
    lines = ["| step | what it changes | parameters | loss at init | whole-val loss (mean ± sd) | first-step logit change | time (median of the seeds) |",
             "|---|---|---|---|---|---|---|"]
    for results in rows:
        r, losses = results[0], [x.val_loss for x in results]
        spread = statistics.stdev(losses) if len(losses) > 1 else 0.0
        lines.append(f"| `{r.step}` | {CHANGES[r.step]} | {r.params:,} | {statistics.mean(x.init_loss for x in results):.3f} | "
                     f"**{statistics.mean(losses):.4f}** ± {spread:.4f} | {statistics.mean(x.first_move for x in results):.4f} | "
                     f"{statistics.median(x.seconds for x in results):.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["data", "averaging", *MODEL_STEPS, "all"])
    p.add_argument("--data", default=None, help="text file or URL (default: $MINIGPT_DATA, else the packaged Tiny Shakespeare)")
    p.add_argument("--max_iters", type=int, default=MAX_ITERS)
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds (default 1337,1,2)")
    args = p.parse_args(argv)
    if args.max_iters < 1:
        raise ValueError(f"--max_iters must be a positive integer, got {args.max_iters}")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    steps = ["data", "averaging", *MODEL_STEPS] if args.step == "all" else [args.step]
    rows = []
    for step in steps:
        if step == "data":
            step_data(args.data)
        elif step == "averaging":
            step_averaging()
        else:
            rows.append(run_step(step, args.data, args.max_iters, seeds))
    if len(rows) > 1:
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
