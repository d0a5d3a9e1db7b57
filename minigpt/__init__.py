"""minigpt: a from-scratch deep-learning engine, small enough to read, fast enough to use.

    import minigpt
    from minigpt import functional as F, nn, optim

The pieces, in the order to read them (the README's):
    tensor.py      Tensor, the op base class Function, backward, no_grad
    ops.py         the Tensor operators (+ - * / @ sum ...) with their backward, given to Tensor
                   when ops.py is imported, as ``import minigpt`` does, in any order
    functional.py  the neural-net ops with hand-written backward passes (the reference)
    nn/            Module, the layers, the GPT and the bigram model
    optim.py       AdamW, gradient clipping, the learning-rate schedule
    gradcheck.py   numerical gradient checks
    viz.py         the graph behind a tensor, as Graphviz DOT text or a picture
    backend.py     NumPy or CuPy (``xp``), devices, the random generator
    data.py        Tiny Shakespeare (shipped inside the package), CharTokenizer, batches
    train.py       the training loop, in nanoGPT's shape; training/ holds its rooms: the settings
                   (``minigpt.TrainConfig()`` is the ``minigpt train`` defaults), the step,
                   evaluation, metrics
    fast/          the same math, faster on a CPU: fast.GPT, fast.AdamW and a twin of each op
    distributed.py data parallel over MPI
    commands/      the ``minigpt`` command and its subcommands
"""

from minigpt import backend, data, fast, functional, nn, ops, optim, viz
from minigpt.backend import available_devices, get_array_module, manual_seed
from minigpt.gradcheck import GradcheckError, gradcheck
from minigpt.ops import cat
from minigpt.tensor import Tensor, is_grad_enabled, no_grad
from minigpt.training.config import TrainConfig

__version__ = "0.1.0"

__all__ = ["Tensor", "cat", "no_grad", "is_grad_enabled", "manual_seed", "gradcheck", "GradcheckError",
           "available_devices", "get_array_module", "backend", "data", "fast", "functional", "nn", "ops", "optim",
           "viz", "TrainConfig"]
