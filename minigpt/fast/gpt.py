"""``fast.GPT``, the twin of ``nn.GPT`` (minigpt/nn/gpt.py): the same model, run with the fast ops.

It is an ``nn.GPT`` (the same constructor, parameters, init, ``state_dict`` and generation) whose
``forward`` is :func:`gpt_forward` on NumPy arrays, and the reference forward on CuPy arrays or
inside ``fast.disabled()``. :func:`gpt_forward` is, line for line, the model's forward with its
modules unrolled, three differences:
- every op is its twin from fast/functional.py and fast/attention.py;
- attention runs fused from c_attn's packed output (fast.attention.CausalSelfAttentionQKV):
  no split into three head tensors and no merge copy;
- GELU and the residual adds write over arrays that nothing else reads (c_fc's output, each
  branch's output) instead of allocating new ones.
Dropout draws its masks in the same order as the model's forward, so with the same seed the
two give the same numbers (tests/test_fast.py). It reads the model's public attributes only.

Legend: B batch, T time, C channels, V vocab.
"""

from __future__ import annotations

from typing import Any

from minigpt import backend, nn
from minigpt.fast.attention import causal_self_attention
from minigpt.fast.functional import GELU, ResidualAdd, cross_entropy, embedding, layer_norm, linear
from minigpt.fast.switch import enabled
from minigpt.functional import dropout
from minigpt.nn.gpt import check_ids
from minigpt.tensor import Tensor


class GPT(nn.GPT):
    """Twin of ``nn.GPT``: ``GPT(config)`` builds the same model (same parameters, init and
    ``state_dict``); its forward gives the same numbers to float32 rounding, faster on a CPU."""

    def forward(self, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) int, T <= block_size -> (logits (B, T, V), mean cross-entropy or None)."""
        if not enabled(self.lm_head.weight):  # CuPy, or inside fast.disabled(): the reference
            return super().forward(idx, targets)
        idx = backend.unwrap(idx)
        check_ids(idx, self.config.block_size)
        return gpt_forward(self, idx, targets)


def _layer_norm(ln: Any, x: Tensor) -> Tensor:
    return layer_norm(x, ln.weight, ln.bias, ln.eps)


def _linear(layer: Any, x: Tensor) -> Tensor:
    return linear(x, layer.weight, layer.bias)


def _attention(attn: Any, x: Tensor) -> Tensor:
    """CausalSelfAttention.forward: c_attn -> heads -> causal attention -> merged -> c_proj."""
    qkv = _linear(attn.c_attn, x)  # (B, T, C) -> (B, T, 3C)
    y = causal_self_attention(qkv, attn.n_head, dropout_p=attn.attn_dropout_p if attn.training else 0.0)
    return dropout(_linear(attn.c_proj, y), attn.resid_dropout.p, attn.resid_dropout.training)


def _mlp(mlp: Any, x: Tensor) -> Tensor:
    """MLP.forward: c_fc -> GELU -> c_proj."""
    h = GELU.apply(_linear(mlp.c_fc, x), inplace=True)  # (B, T, C) -> (B, T, 4C), over c_fc's output
    return dropout(_linear(mlp.c_proj, h), mlp.dropout.p, mlp.dropout.training)  # (B, T, 4C) -> (B, T, C)


def gpt_forward(model: Any, idx: Any, targets: Any = None) -> tuple[Tensor, Tensor | None]:
    """GPT.forward with the fast ops: idx (B, T) int array (the embedding checks it), targets
    (B, T) or None -> (logits (B, T, V), mean cross-entropy or None)."""
    tr = model.transformer
    w = model.lm_head.weight
    tok_emb = embedding(idx, tr.wte.weight)  # (B, T, C)
    pos_emb = tr.wpe.weight[:idx.shape[1]]  # (T, C), broadcast over B: rows 0..T-1, as GPT._embed
    x = dropout(tok_emb + pos_emb, tr.drop.p, tr.drop.training)
    for block in tr.h:
        # x + attn(ln_1(x)), then x + mlp(ln_2(x)), each written over its branch's output
        x = ResidualAdd.apply(x, _attention(block.attn, _layer_norm(block.ln_1, x)), inplace=True)
        x = ResidualAdd.apply(x, _mlp(block.mlp, _layer_norm(block.ln_2, x)), inplace=True)
    x = _layer_norm(tr.ln_f, x)
    logits = linear(x, w)  # (B, T, C) -> (B, T, V)
    loss = cross_entropy(logits, targets, ignore_index=-1) if targets is not None else None
    return logits, loss
