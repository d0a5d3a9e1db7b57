"""minigpt.fast: the same math as minigpt.functional and minigpt.optim, faster on a CPU.

Read the reference first (minigpt/functional.py, minigpt/optim.py, minigpt/nn/gpt.py): it is
the math. Each twin here computes the same thing with CPU tricks, and its docstring names its
reference, says what it does differently and why. tests/test_fast.py holds every twin equal to
its reference at sizes where every tile, remainder and branch runs. The twins a training run
builds are ``fast.GPT`` and ``fast.AdamW``: the same constructor arguments, ``state_dict`` keys and
numbers (to float32 rounding) as ``nn.GPT`` and ``optim.AdamW``. Nothing in the reference imports
this package.

    gpt.py         GPT: nn.GPT whose forward runs the twins below
    optim.py       AdamW over one flat buffer per parameter group
    switch.py      disabled() / is_disabled() / enabled(array): when a twin runs its fast path
    tiling.py      tiles that fit the cache; reductions.py: BLAS row sums, a max tree
    functional.py  embedding, linear, softmax, cross_entropy, layer_norm, gelu, the residual add
    attention.py   attention per batch tile; fused multi-head attention from packed qkv
    parallel.py    the data-parallel step of ranks on one machine: shared weights, the work split
    memory.py      keep freed memory in malloc's heap between steps

What each twin gains is measured by benchmarks/bench_fast_ops.py (each twin against its reference,
forward + backward, at the shapes of nanoGPT's CPU recipe); the figures are in docs/performance.md.

Functions here take the same arguments as their references, so ``minigpt.fast`` can stand
where ``minigpt.functional`` stands (``dropout`` and ``log_softmax`` have no twin: the
reference serves).
"""

from minigpt.fast.attention import causal_self_attention, scaled_dot_product_attention
from minigpt.fast.functional import cross_entropy, embedding, gelu, layer_norm, linear, softmax
from minigpt.fast.gpt import GPT, gpt_forward
from minigpt.fast.memory import keep_freed_memory
from minigpt.fast.optim import AdamW
from minigpt.fast.parallel import SharedMemoryStep
from minigpt.fast.switch import disabled, enabled, is_disabled
from minigpt.functional import dropout, log_softmax

__all__ = ["GPT", "AdamW", "disabled", "is_disabled", "enabled", "embedding", "linear", "softmax", "log_softmax", "cross_entropy", "layer_norm",
           "gelu", "dropout", "scaled_dot_product_attention", "causal_self_attention",
           "gpt_forward", "SharedMemoryStep", "keep_freed_memory"]
