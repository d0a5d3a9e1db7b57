"""Fused ops: one Function doing the work of several, for speed. Each has a composed,
obvious twin built from the ops in functional.py, and a test holds the two equal.

Legend: B batch, T time, C channels, nh heads, hs head size (C = nh * hs).
"""

from __future__ import annotations

import math
from typing import Any

from minigpt import backend
from minigpt.attention import attention_backward, attention_forward
from minigpt.functional import _check_p
from minigpt.tensor import Function, Tensor, unbroadcast


def split_heads(qkv: Any, n_head: int) -> Any:
    """Packed qkv (B, T, 3C) seen as the heads of q, k and v: (3, B, nh, T, hs), a view (no copy)."""
    B, T, C3 = qkv.shape
    return qkv.reshape(B, T, 3, n_head, C3 // 3 // n_head).transpose(2, 0, 3, 1, 4)


class CausalSelfAttentionQKV(Function):
    """Multi-head causal attention straight from the c_attn output qkv (B, T, 3C) to the
    merged heads y (B, T, C). The composed twin (what GPT would otherwise run):

        q, k, v = qkv.reshape(B, T, 3, nh, hs).transpose(2, 0, 3, 1, 4)   # 3 × (B, nh, T, hs)
        y = scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)

    Fused, the heads are strided views of qkv (no copies), and backward writes dq, dk, dv
    straight into the one d(qkv) buffer, instead of three zero-filled index gradients
    summed together. The math is attention_forward / attention_backward, shared with
    F.scaled_dot_product_attention. Saves qkv and att (B, nh, T, T) (plus the dropout mask).
    """

    def forward(self, qkv: Any, n_head: int, dropout_p: float = 0.0) -> Any:
        B, T, C3 = qkv.shape
        C = C3 // 3
        heads = split_heads(qkv, n_head)  # (3, B, nh, T, hs), a view
        self.scale = 1.0 / math.sqrt(C // n_head)
        y, att, drop = attention_forward(heads[0], heads[1], heads[2], True, dropout_p, self.scale)
        self.saved = (qkv, att, drop)
        self.n_head = n_head
        return y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)

    def backward(self, dy: Any) -> Any:
        qkv, att, drop = self.saved
        xp = backend.get_array_module(dy)
        B, T, C3 = qkv.shape
        nh, hs = self.n_head, C3 // 3 // self.n_head
        heads = split_heads(qkv, nh)
        # forward: y = merged heads  =>  dy viewed per head
        dy_heads = dy.reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        dqkv = xp.empty((B, T, C3), dtype=qkv.dtype)
        d_heads = split_heads(dqkv, nh)  # (3, B, nh, T, hs) views: dq, dk, dv are written straight in
        attention_backward(dy_heads, heads[0], heads[1], heads[2], att, drop, self.scale,
                           out=(d_heads[0], d_heads[1], d_heads[2]))
        return dqkv


def causal_self_attention(qkv: Tensor, n_head: int, dropout_p: float = 0.0) -> Tensor:
    """Causal multi-head attention from packed qkv (B, T, 3C) to merged heads (B, T, C)."""
    _check_p(dropout_p)
    return CausalSelfAttentionQKV.apply(qkv, n_head=n_head, dropout_p=dropout_p)


class ResidualAdd(Function):
    """x + branch, written over branch's array (``inplace``): the residual connection x + f(x),
    where the branch output f(x) (a linear layer's fresh output) is read by nothing else.
    The composed twin is x + branch (ops.Add). Backward: dx = dy, dbranch = dy. Saves nothing."""

    def forward(self, x: Any, branch: Any, inplace: bool = True) -> Any:
        xp = backend.get_array_module(x)
        self.shapes = (x.shape, branch.shape)
        if not inplace or branch.shape != x.shape or branch.dtype != x.dtype or not backend.writeable(branch):
            return x + branch  # broadcasting, or a branch not ours to write: a new array, as ops.Add
        return xp.add(branch, x, out=branch)  # a + b = b + a exactly, in floating point too

    def backward(self, dy: Any) -> tuple[Any, Any]:
        # forward: y = x + branch  =>  dx = dy, dbranch = dy (summed back over broadcast axes)
        return unbroadcast(dy, self.shapes[0]), unbroadcast(dy, self.shapes[1])


def residual_add(x: Tensor, branch: Tensor) -> Tensor:
    """x + branch for the residual stream, reusing branch's array when it is an op's output
    (see ResidualAdd); a leaf (a parameter, a tensor the caller made) is never written over."""
    return ResidualAdd.apply(x, branch, inplace=isinstance(branch, Tensor) and not branch.is_leaf)
