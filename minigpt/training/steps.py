"""One optimisation step: in one process, or split over the ranks of a data-parallel run.

    training_step         what the loop calls: step(it, x, y) -> (loss, stop), the right one of these
    train_step            forward, backward, clip, AdamW: the step of one process
    parallel_train_step   the same on N ranks: each rank's slice of the batch, one all-reduce
    data_parallel_step    the data-parallel step a run takes: the shared-memory twin where it can
    asked_to_stop         whether any rank was asked to stop (one process: whether it was)

Legend: B batch, T time, N ranks.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from minigpt import backend, distributed, fast, optim
from minigpt.nn import Module


class TrainingError(RuntimeError):
    """Training cannot go on (the loss became NaN or infinite...). In a data-parallel run every
    rank sees the same all-reduced loss and raises it at the same step."""

    every_rank = True


def train_step(model: Module, optimizer: optim.AdamW, x: Any, y: Any, grad_clip: float) -> float:
    """One optimisation step on the batch (x, y): forward, backward, clip, AdamW. Returns the loss.

    On a GPU everything stays on the device until the last line: clipping computes its scale there
    (no norm read back), and ``loss.item()``, which the progress line and the NaN check need, is the
    step's one device-to-host synchronisation."""
    _, loss = model(x, y)
    optimizer.zero_grad()
    loss.backward()
    if grad_clip > 0:
        optim.clip_grad_norm_(model.parameters(), grad_clip, read_back=False)  # no GPU sync
    optimizer.step()
    return loss.item()


def parallel_train_step(model: Module, optimizer: optim.AdamW, x: Any, y: Any, grad_clip: float,
                        world: distributed.World, should_stop: Callable[[], bool]) -> tuple[float, bool]:
    """:func:`train_step` of a data-parallel run: this rank's forward and backward on its slice of
    the global batch (x, y), then one all-reduce that leaves every rank with the mean gradient
    over the global batch (see minigpt/distributed.py), then the same clipping and AdamW step on
    every rank. Returns the global batch's loss and whether any rank's ``should_stop()`` said True
    (asked just before the all-reduce, so that every rank stops after the same step)."""
    mine = world.shard(len(x))  # (B, T) -> (B/N, T): this rank's contiguous rows
    _, loss = model(x[mine], y[mine])
    optimizer.zero_grad()
    loss.backward()
    lossf, stop = world.average_gradients(distributed.optimizer_order(optimizer, model.parameters()), loss, should_stop())
    if grad_clip > 0:
        optim.clip_grad_norm_(model.parameters(), grad_clip, read_back=False)
    optimizer.step()
    return lossf, stop


def data_parallel_step(model: Module, optimizer: optim.AdamW, world: distributed.World
                       ) -> tuple[Callable[[Any, Any, float, Callable[[], bool]], tuple[float, bool]], str]:
    """Collective: the data-parallel step this run takes, ``step(x, y, grad_clip, should_stop)``,
    and how it sums the gradients, in words. Where every rank runs on this machine with the fast
    twins on, :class:`fast.SharedMemoryStep` (the ranks share one copy of the weights and split
    the work after backward; the same numbers, bit for bit with 2 ranks), else
    :func:`parallel_train_step` (and why)."""
    twin = fast.SharedMemoryStep.start(world, model, optimizer)
    if isinstance(twin, fast.SharedMemoryStep):
        return twin, "shared memory"

    def step(x: Any, y: Any, grad_clip: float, should_stop: Callable[[], bool]) -> tuple[float, bool]:
        return parallel_train_step(model, optimizer, x, y, grad_clip, world, should_stop)

    return step, f"MPI all-reduce ({twin})"


Step = Callable[[int, Any, Any], "tuple[float, bool]"]  # step(it, x, y) -> (the loss, whether to stop)


@contextlib.contextmanager
def training_step(model: Module, optimizer: optim.AdamW, grad_clip: float, world: distributed.World,
                  should_stop: Callable[[], bool]) -> Iterator[tuple[Step, str]]:
    """Collective (every rank enters it): the step the training loop takes, ``step(it, x, y)`` ->
    (the batch's loss, whether to stop after it), and how it sums the gradients, in words. One
    process: :func:`train_step`, then ``should_stop()``. N ranks: :func:`data_parallel_step`, each
    rank drawing its own dropout masks for step ``it``; leaving the block frees a shared-memory
    step's block (also when every rank stops on the same error)."""
    if world.size == 1:
        yield (lambda it, x, y: (train_step(model, optimizer, x, y, grad_clip), should_stop())), "one process"
        return
    parallel_step, how = data_parallel_step(model, optimizer, world)

    def step(it: int, x: Any, y: Any) -> tuple[float, bool]:
        backend.start_host_stream(it, world.rank)  # this rank's own dropout masks of step it
        return parallel_step(x, y, grad_clip, should_stop)

    with shared_block_freed_at_the_end(parallel_step):
        yield step, how


def asked_to_stop(world: distributed.World, should_stop: Callable[[], bool]) -> bool:
    """Collective: whether ``should_stop()`` says True on any rank (so that every rank stops, or none)."""
    return world.sum(float(should_stop())) > 0


@contextlib.contextmanager
def shared_block_freed_at_the_end(step: Any) -> Iterator[None]:
    """Close a shared-memory step (collective: the weights private again, the shared block freed)
    when the training loop ends, or stops on an error every rank meets at the same step (a NaN
    loss, a parameter that stopped being shared). An error of one rank alone aborts the run."""
    if not isinstance(step, fast.SharedMemoryStep):
        yield
        return
    try:
        yield
    except (TrainingError, distributed.EveryRankError):
        step.close()
        raise
    step.close()
