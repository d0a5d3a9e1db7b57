"""The GPT: GPT-2's architecture as nanoGPT builds it, and its text generation.

Legend: B batch, T time, C channels (n_embd), V vocab, nh heads (n_head), hs head size (C // nh).

    idx (B, T) ──wte──> tok (B, T, C) ─┐
    arange(T) ──wpe──> pos (T, C) ─────┴─+─> dropout ─> n_layer × Block ─> ln_f ─> lm_head ─> logits (B, T, V)
    Block:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))          (pre-LayerNorm, residual stream)
    attn:   c_attn (C -> 3C) -> q, k, v (B, nh, T, hs) -> causal attention -> c_proj (C -> C)
    mlp:    c_fc (C -> 4C) -> GELU -> c_proj (4C -> C)

Parameter names match nanoGPT's, so state_dicts move between the two.

Everything below is written with the reference ops of minigpt.functional: this is the model a
learner reads and steps through. ``minigpt.fast.GPT`` (minigpt/fast/gpt.py) is its twin, the same
model with a faster forward on a CPU; the training command builds that one unless ``--reference``.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from minigpt import backend
from minigpt import functional as F
from minigpt.nn.config import GPTConfig, check_settings  # noqa: F401 - both also reachable here
from minigpt.nn.layers import Dropout, Embedding, LayerNorm, Linear
from minigpt.nn.module import Module, ModuleDict, ModuleList
from minigpt.tensor import Tensor, no_grad


class CausalSelfAttention(Module):
    """Multi-head causal self-attention: every position attends to itself and the past."""

    def __init__(self, config: GPTConfig) -> None:
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout_p = config.dropout
        self.resid_dropout = Dropout(config.dropout)
        self.n_head, self.n_embd = config.n_head, config.n_embd

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        qkv = self.c_attn(x)  # (B, T, C) -> (B, T, 3C): queries, keys and values of every head
        # split q, k, v, each into nh heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for i in range(3))
        p = self.attn_dropout_p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # the heads side by side again: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward_cached(self, x: Tensor, cache: dict[str, Any], pos: int) -> Tensor:
        """Attention for new positions pos.. of x (B, t, C), reading and extending the key/value
        ``cache`` ({"k", "v"}: (B, nh, block_size, hs)) instead of recomputing the past."""
        B, t, C = x.shape
        qkv = F.split_heads(self.c_attn(x).data, self.n_head)  # (3, B, nh, t, hs)
        cache["k"][:, :, pos:pos + t] = qkv[1]
        cache["v"][:, :, pos:pos + t] = qkv[2]
        keys, values = cache["k"][:, :, :pos + t], cache["v"][:, :, :pos + t]  # (B, nh, pos + t, hs)
        # a prefill (pos 0) is causal among its t positions; one new query may see every cached key
        y = F.scaled_dot_product_attention(Tensor(qkv[0]), Tensor(keys), Tensor(values), is_causal=pos == 0)
        y = y.transpose(0, 2, 1, 3).reshape(B, t, C)  # (B, nh, t, hs) -> (B, t, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, config: GPTConfig) -> None:
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = F.gelu(self.c_fc(x))  # (B, T, C) -> (B, T, 4C)
        return self.dropout(self.c_proj(h))  # (B, T, 4C) -> (B, T, C)


class Block(Module):
    """One transformer block: communication (attention), then computation (MLP), each pre-normed
    and added to the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def forward_cached(self, x: Tensor, cache: dict[str, Any], pos: int) -> Tensor:
        x = x + self.attn.forward_cached(self.ln_1(x), cache, pos)
        return x + self.mlp(self.ln_2(x))


def _normal_(p: Any, std: float) -> None:
    p.data[...] = backend.generator().standard_normal(p.shape) * std


def check_ids(idx: Any, block_size: int) -> None:
    """idx must be (B, T) token ids with T <= block_size: the position table has block_size rows."""
    if idx.ndim != 2:
        raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
    if idx.shape[1] > block_size:
        raise ValueError(f"cannot forward a sequence of length {idx.shape[1]}: block_size is {block_size}")


def check_vocabulary(vocab_size: int, outputs: int, where: str = "") -> None:
    """A tokenizer of ``vocab_size`` tokens needs a model of at least as many outputs (more are
    allowed: a row for every token, and rows no token reads)."""
    if vocab_size > outputs:
        raise ValueError(f"{where + ': ' if where else ''}the tokenizer has {vocab_size} tokens but the model only "
                         f"{outputs} outputs")


class GPT(Module):
    """GPT-2 as nanoGPT builds it (see the module docstring), with weight tying:
    ``lm_head.weight`` IS ``transformer.wte.weight``, so reading a token in and writing one
    out share one (V, C) table."""

    def __init__(self, config: GPTConfig) -> None:
        self.config = config
        self.transformer = ModuleDict(dict(
            wte=Embedding(config.vocab_size, config.n_embd),
            wpe=Embedding(config.block_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's init: weights N(0, 0.02), biases 0, and the projections that write into the
        residual stream N(0, 0.02/√(2·n_layer)) so the stream's variance does not grow with depth."""
        for m in self.modules():
            if isinstance(m, (Linear, Embedding)):
                _normal_(m.weight, 0.02)
            if isinstance(m, Linear) and m.bias is not None:
                m.bias.data[...] = 0
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                _normal_(p, 0.02 / math.sqrt(2 * self.config.n_layer))

    def _embed(self, idx: Any, start: int = 0) -> Tensor:
        """Token plus position embeddings of idx (B, T), for positions start..start+T-1: (B, T, C)."""
        tok_emb = self.transformer.wte(idx)  # (B, T, C); the op checks idx where it is, then moves it
        # wpe(arange(start, start + T)) is rows start..start+T-1 of the position table: taken as a
        # slice, with no index array to build, check or move to the device
        pos_emb = self.transformer.wpe.weight[start:start + idx.shape[1]]  # (T, C), broadcast over B
        return self.transformer.drop(tok_emb + pos_emb)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied table once); ``non_embedding`` leaves out the position table,
        as nanoGPT reports it."""
        n = super().num_params()
        return n - self.transformer.wpe.weight.size if non_embedding else n

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) int, T <= block_size -> (logits (B, T, V), mean cross-entropy or None)."""
        # idx and targets stay where they are (a GPU run's batches on the host): embedding and
        # cross-entropy check them there, for free, and only then copy them to the device
        idx = backend.unwrap(idx)
        check_ids(idx, self.config.block_size)
        x = self._embed(idx)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=-1)
        return logits, loss

    @no_grad()
    def attention_maps(self, idx: Any) -> Any:
        """The attention weights of every head of every layer for idx (B, T): an array
        (n_layer, B, nh, T, T) whose row t says how much position t reads from each position <= t.
        Meant for a model in eval mode (in training mode dropout would perturb the stream)."""
        w = self.lm_head.weight
        idx = backend.unwrap(idx)  # the embedding checks it where it is, then moves it
        nh = self.config.n_head
        hs = self.config.n_embd // nh
        x = self._embed(idx)
        maps = []
        for block in self.transformer.h:
            q, k, _ = F.split_heads(block.attn.c_attn(block.ln_1(x)).data, nh)  # 3 × (B, nh, T, hs)
            maps.append(F.attention_weights(q, k, is_causal=True, scale=1.0 / math.sqrt(hs)))  # (B, nh, T, T)
            x = block(x)
        return w.xp.stack(maps)

    @no_grad()
    def generate(self, idx: Any, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True,
                 on_token: Callable[[Any], None] | None = None, vocab_limit: int | None = None) -> Any:
        """Append ``max_new_tokens`` sampled tokens to idx (B, T); the context is cropped to
        the last block_size tokens as it grows. Returns ids (B, T + max_new_tokens), of the
        same kind (array or Tensor) as ``idx``. ``temperature``, ``top_k`` and ``top_p`` shape the
        distribution each token is drawn from (:func:`sample_next`); ``on_token`` is called with
        each new column of ids (B,) as it is drawn, to stream the text; ``vocab_limit`` keeps the
        draws below it (a model with more outputs than its tokenizer has tokens).

        With ``use_cache`` (the default) every layer keeps the keys and values of the positions
        it has seen, so a new token costs one position, not the whole context. Once the context
        is longer than block_size the window slides: every position (hence every key) changes,
        and each step recomputes the cropped window, exactly as ``use_cache=False`` always does.
        Both give the same tokens for the same seed.
        """
        block = self.config.block_size
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p, "on_token": on_token,
                    "vocab_limit": vocab_limit}
        if not use_cache:
            return generate_loop(idx, max_new_tokens, lambda ids: self(ids[:, -block:])[0].data[:, -1, :],
                                 **sampling)  # crop, forward, last position
        caches: list[dict[str, Any]] = []
        filled = 0  # positions in the caches; 0 forces a (re)fill

        def next_logits(ids: Any) -> Any:
            nonlocal caches, filled
            if filled == 0 or filled + 1 > block:  # (re)fill from the context, cropped to block_size
                ctx = ids[:, -block:]
                caches = [self._new_cache(ids.shape[0]) for _ in self.transformer.h]
                logits = self._forward_cached(ctx, caches, 0)
                filled = ctx.shape[1]
            else:  # one new position
                logits = self._forward_cached(ids[:, -1:], caches, filled)
                filled += 1
            return logits.data[:, -1, :]  # (B, V)

        return generate_loop(idx, max_new_tokens, next_logits, **sampling)

    # ------------------------------------------------------------------ Hugging Face GPT-2 folders
    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *,
                        block_size: int | None = None, dropout: float = 0.0) -> GPT:
        """GPT-2's weights ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", downloaded once from the
        Hugging Face Hub) or a folder's (``config.json`` + ``model.safetensors``), as this class,
        in eval mode; ``block_size`` (up to the weights' context) keeps the first rows of the
        position table. How GPT-2's tensors map onto this model: minigpt/pretrained.py."""
        from minigpt import pretrained  # noqa: PLC0415 - the Hub, files and formats: loaded when asked for

        shape, state = pretrained.read_pretrained(name_or_dir, cache_dir, block_size)
        model = cls(GPTConfig(**vars(shape), dropout=dropout))
        model.load_state_dict(state)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, tokenizer: Any = None) -> None:
        """Write this model as a Hugging Face GPT-2 folder that transformers' GPT2LMHeadModel loads,
        with ``tokenizer`` beside it (see minigpt/pretrained.py)."""
        from minigpt import pretrained  # noqa: PLC0415

        pretrained.save_pretrained(self, folder, tokenizer)

    def _new_cache(self, B: int) -> dict[str, Any]:
        w = self.lm_head.weight
        shape = (B, self.config.n_head, self.config.block_size, self.config.n_embd // self.config.n_head)
        return {"k": w.xp.zeros(shape, dtype=w.dtype), "v": w.xp.zeros(shape, dtype=w.dtype)}

    def _forward_cached(self, idx: Any, caches: list[dict[str, Any]], pos: int) -> Tensor:
        """Logits (B, 1, V) of the last of the new positions pos.. given in idx (B, t)."""
        x = self._embed(idx, start=pos)  # (B, t, C)
        for block, cache in zip(self.transformer.h, caches):
            x = block.forward_cached(x, cache, pos)
        x = self.transformer.ln_f(x[:, -1:, :])  # only the last position's logits are needed
        return self.lm_head(x)  # (B, 1, V)


def sample_next(logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None) -> Any:
    """One token id per row of logits (B, V): softmax(logits / temperature), restricted to the
    ``top_k`` largest, then to the nucleus of ``top_p`` (the smallest set of the most likely tokens
    whose probabilities sum to at least top_p), sampled with minigpt's generator. temperature 0
    picks the argmax."""
    logits = backend.to_numpy(logits).astype("float64")  # (B, V), on the CPU: one RNG for every device
    xp = backend.get_array_module(logits)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if temperature == 0:
        return logits.argmax(axis=-1)
    logits = logits / temperature
    if top_k is not None:
        k = min(int(top_k), logits.shape[-1])
        if k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = xp.sort(logits, axis=-1)[:, -k][:, None]  # (B, 1): the k-th largest logit of each row
        logits = xp.where(logits < kth, -xp.inf, logits)
    probs = F.softmax(Tensor(logits), axis=-1).data  # (B, V)
    if top_p is not None and top_p < 1:  # 1 keeps every token (no rounding may drop one)
        probs = nucleus(probs, top_p)
    if not xp.isfinite(probs).all():
        raise ValueError("the logits are not finite (NaN or inf): the model's weights or the temperature "
                         "cannot give a distribution to sample from")
    u = backend.generator().random(probs.shape[0])  # (B,)
    cdf = probs.cumsum(axis=-1)
    return xp.minimum((cdf < u[:, None] * cdf[:, -1:]).sum(axis=-1), probs.shape[-1] - 1)  # (B,)


def nucleus(probs: Any, top_p: float) -> Any:
    """probs (B, V) with every token outside its row's nucleus set to 0: the most likely tokens,
    in order, until their probabilities sum to at least ``top_p`` (a token is kept when the tokens
    more likely than it hold less than top_p). Not renormalised: sampling divides by the sum."""
    xp = backend.get_array_module(probs)
    order = xp.argsort(-probs, axis=-1, kind="stable")  # (B, V): most likely first (ties: lower id first)
    ranked = xp.take_along_axis(probs, order, axis=-1)
    before = xp.cumsum(ranked, axis=-1) - ranked  # the mass of the tokens ranked above each
    keep = xp.zeros_like(probs, dtype=bool)
    xp.put_along_axis(keep, order, before < top_p, axis=-1)
    return xp.where(keep, probs, 0.0)


def generate_loop(idx: Any, max_new_tokens: int, next_logits: Callable[[Any], Any], temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None,
                  on_token: Callable[[Any], None] | None = None, vocab_limit: int | None = None) -> Any:
    """The sampling loop every model shares: ``max_new_tokens`` times, take the logits of the
    next token given everything so far (``next_logits``: ids (B, t) -> (B, V)), sample one
    token per row (below ``vocab_limit`` if given), append it (and hand it to ``on_token``).
    Returns ids (B, T + max_new_tokens), array or Tensor as idx was."""
    as_tensor = isinstance(idx, Tensor)
    idx = backend.unwrap(idx)
    xp = backend.get_array_module(idx)
    idx = xp.asarray(idx, dtype="int64")
    for _ in range(max_new_tokens):
        logits = next_logits(idx)  # (B, V)
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits = logits[:, :vocab_limit]  # the ids past the tokenizer's are never drawn
        nxt = sample_next(logits, temperature, top_k, top_p)  # (B,)
        idx = xp.concatenate([idx, xp.asarray(nxt, dtype="int64")[:, None]], axis=1)  # (B, T + 1)
        if on_token is not None:
            on_token(idx[:, -1])
    return Tensor(idx) if as_tensor else idx
