"""minigpt.fast: the same math as minigpt.functional and minigpt.optim, faster on a CPU.

Read the reference ops first (minigpt/functional.py, minigpt/optim.py): they are the math.
Each twin here computes the same thing with CPU tricks, and its docstring names its reference,
says what it does differently and why. tests/test_fast.py holds every twin equal to its
reference at sizes where every tile, remainder and branch runs.

    switch.py      enabled(array) / disabled(): the one switch (fast on NumPy, unless disabled)
    tiling.py      tiles that fit the cache; reductions.py: BLAS row sums, a max tree
    functional.py  embedding, linear, softmax, cross_entropy, layer_norm, gelu, residual_add
    attention.py   attention per batch tile; fused multi-head attention from packed qkv
    gpt.py         GPT.forward with the twins (the model calls it where enabled)
    optim.py       AdamW over one flat buffer per parameter group
    parallel.py    the data-parallel step of ranks on one machine: shared weights, the work split
    memory.py      keep freed memory in malloc's heap between steps

What each twin gains is measured by benchmarks/bench_fast_ops.py (each twin against its reference,
forward + backward, at the shapes of nanoGPT's CPU recipe); the figures are in docs/performance.md.

Functions here take the same arguments as their references, so ``minigpt.fast`` can stand
where ``minigpt.functional`` stands (``dropout`` and ``log_softmax`` have no twin: the
reference serves).
"""

from minigpt.fast.attention import causal_self_attention, scaled_dot_product_attention
from minigpt.fast.functional import (cross_entropy, embedding, gelu, gelu_, layer_norm, linear, residual_add,
                                     softmax)
from minigpt.fast.gpt import gpt_forward
from minigpt.fast.memory import keep_freed_memory
from minigpt.fast.optim import AdamW
from minigpt.fast.parallel import SharedMemoryStep
from minigpt.fast.switch import disabled, enabled
from minigpt.functional import dropout, log_softmax

__all__ = ["disabled", "enabled", "embedding", "linear", "softmax", "log_softmax", "cross_entropy", "layer_norm",
           "gelu", "gelu_", "dropout", "scaled_dot_product_attention", "causal_self_attention", "residual_add",
           "gpt_forward", "AdamW", "SharedMemoryStep", "keep_freed_memory"]
