"""Data parallelism over MPI: the same model on every process, another slice of every batch,
one all-reduce of the gradients. This is what PyTorch's DistributedDataParallel (and Chainer's
ChainerMN before it) does, in one file.

    mpiexec -n 2 python examples/train_shakespeare.py      # 2 processes ("ranks") on 2 cores

Why it is the same optimisation step as one process on the whole batch. The loss is a mean over
the global batch of B rows; split the rows into N equal contiguous slices, one per rank:

    L = (1/B) Σ_b ℓ_b = (1/N) Σ_r L_r,      L_r = (N/B) Σ_{b in slice r} ℓ_b   (rank r's own mean)
    ∂L/∂θ = (1/N) Σ_r ∂L_r/∂θ

Each rank runs forward and backward on its B/N rows alone, divides its gradient by N, and one
all-reduce sums the N results (every rank gets the sum): every rank now holds the gradient of
the global mean loss, clips it and takes the same AdamW step on the same weights. The weights
never travel; they stay equal because they start equal (same seed, checked) and every step is
the same arithmetic on the same numbers.

Everything the ranks must agree on after a step rides in that one all-reduce: the gradients, the
loss (for the progress line and the NaN check) and a stop flag (Ctrl-C or SIGTERM on any rank stops
every rank after the same step).

This file is the plain version of that step, the one to read. On one machine the training loop
runs its fast twin, minigpt/fast/parallel.py: the same sum, clip and AdamW step with the ranks
sharing one copy of the weights in shared memory and splitting that work between them (the same
numbers, bit for bit with 2 ranks, less work; train.data_parallel_step picks it). Across machines this file's all-reduce runs.

Launched without ``mpiexec`` (or with ``-n 1``) this module is a no-op: :func:`world` is a single
rank, nothing imports mpi4py, and the training loop runs exactly as it always has. With N > 1 it
needs the ``mpi`` extra (``pip install -e ".[mpi]"``: mpi4py, the MPICH library and threadpoolctl).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any, Iterable, NoReturn

import numpy

from minigpt import backend
from minigpt.tensor import Tensor

# what the common MPI launchers put in each process's environment: MPICH's and Intel MPI's Hydra
# (PMI_*), Open MPI (OMPI_COMM_WORLD_*). Read before anything imports mpi4py.
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK")


class DistributedError(RuntimeError):
    """A data-parallel run cannot go on (mpi4py missing, ranks that disagree...)."""


class EveryRankError(DistributedError):
    """An error that every rank raises alike, at the same point (the ranks' parameters differ,
    say): rank 0 alone reports it, and every rank exits without aborting the others."""

    every_rank = True


def launched_ranks() -> int:
    """How many processes the MPI launcher started (1 when there is no launcher), read from the
    environment: it needs no mpi4py and starts nothing."""
    for var in _SIZE_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launched_rank() -> int:
    """This process's rank as the launcher numbered it (0 when there is no launcher)."""
    for var in _RANK_VARS:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


class World:
    """The processes of one run: this one's ``rank`` among ``size``. The one-process world
    (``comm`` None) answers every collective with its input, so the code that uses it reads
    the same for one rank and for many."""

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self._buffer: numpy.ndarray | None = None  # the flat gradient buffer, reused step after step

    def shard(self, n: int) -> slice:
        """The contiguous rows of a global batch of ``n`` rows that this rank computes on."""
        if n % self.size:
            raise ValueError(f"a batch of {n} rows cannot be split evenly over {self.size} ranks")
        per = n // self.size
        return slice(self.rank * per, (self.rank + 1) * per)

    def sum(self, values: Any) -> Any:
        """The elementwise sum over every rank of ``values`` (a float or a NumPy array), on every rank."""
        if self.size == 1:
            return values
        buf = numpy.array(values, dtype=numpy.float64)
        self.comm.Allreduce(self._mpi().IN_PLACE, buf, op=self._mpi().SUM)
        return float(buf) if buf.ndim == 0 else buf

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (a small picklable object), in rank order, on every rank."""
        return [value] if self.size == 1 else self.comm.allgather(value)

    def average_gradients(self, params: Iterable[Tensor], loss: Tensor, stop: bool = False) -> tuple[float, bool]:
        """Replace every gradient by its mean over the ranks, in ONE all-reduce of one flat buffer.

        The buffer holds, in order: every parameter's gradient divided by N (flattened; zeros
        where this rank has none), one flag per parameter (1.0 where this rank has its gradient),
        this rank's loss divided by N and its stop flag (1.0 or 0.0). Dividing before the sum
        costs nothing (the copy into the buffer does it) and saves a pass over the buffer after
        it; for N a power of 2 it is exactly the division after the sum (barring gradients so
        small that g / N is subnormal and loses digits). After the sum the buffer
        holds the mean gradient, the mean loss (= the loss on the global batch) and flags > 0
        where any rank had a gradient or asked to stop. Each ``p.grad`` becomes a view of the
        buffer (no copy back); a parameter that no rank used keeps no gradient, as in one process.
        Returns (loss, stop)."""
        params = [p for p in params if p.requires_grad]
        if self.size == 1:
            return loss.item(), stop
        n, k = sum(p.size for p in params), len(params)
        dtype = params[0].dtype
        if self._buffer is None or self._buffer.size != n + k + 2 or self._buffer.dtype != dtype:
            self._buffer = numpy.empty(n + k + 2, dtype=dtype)
        buf, offset = self._buffer, 0
        for i, p in enumerate(params):
            piece = buf[offset:offset + p.size]
            if p.grad is None:
                piece[...] = 0.0
            else:
                numpy.divide(backend.to_numpy(p.grad).reshape(-1), self.size, out=piece)  # ∂L_r/∂θ / N
            buf[n + i] = p.grad is not None
            offset += p.size
        buf[n + k], buf[n + k + 1] = backend.to_numpy(loss.data) / self.size, float(stop)
        # every rank: Σ_r (∂L_r/∂θ) / N = the gradient of the global batch's mean loss
        self.comm.Allreduce(self._mpi().IN_PLACE, buf, op=self._mpi().SUM)
        offset = 0
        for i, p in enumerate(params):
            used = buf[n + i] > 0
            p.grad = backend.move(buf[offset:offset + p.size].reshape(p.shape), p.device) if used else None
            offset += p.size
        return float(buf[n + k]), bool(buf[n + k + 1] > 0)

    def raise_if_any_failed(self, error: BaseException | None) -> None:
        """Collective: every rank tells whether its ``error`` is set; if any is, every rank raises
        the same :class:`EveryRankError` (the first failing rank's message), so rank 0 reports it
        once and no rank is left waiting for the others. One process: re-raises ``error``."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        messages = self.allgather(None if error is None else " ".join(str(error).split()) or type(error).__name__)
        failed = [r for r, m in enumerate(messages) if m is not None]
        if failed:
            where = "" if len(failed) == self.size else f" (on rank {', '.join(map(str, failed))} of {self.size})"
            raise EveryRankError(messages[failed[0]] + where) from error

    def check_same_parameters(self, params: Iterable[Tensor]) -> None:
        """Raise :class:`EveryRankError` unless every rank holds bit-identical parameters (a sha256
        of their bytes, compared across ranks): data parallelism only works from equal weights."""
        if self.size == 1:
            return
        digest = hashlib.sha256()
        for p in params:
            digest.update(numpy.ascontiguousarray(backend.to_numpy(p.data)).tobytes())
        sums = self.allgather(digest.hexdigest()[:12])
        if len(set(sums)) > 1:
            listed = ", ".join(f"rank {r}: {s}" for r, s in enumerate(sums))
            raise EveryRankError(f"the ranks start from different parameters ({listed}): every rank must "
                                 f"build the same model from the same seed and checkpoint")

    def abort(self, code: int) -> NoReturn:
        """Stop every rank at once (a rank that exits alone would leave the others waiting forever
        in their next all-reduce)."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.comm is not None:
            time.sleep(0.5)  # let mpiexec forward what this rank printed before the abort tears the job down
            self.comm.Abort(code)
        raise SystemExit(code)

    @staticmethod
    def _mpi() -> Any:
        from mpi4py import MPI  # noqa: PLC0415 - imported only by a run of N > 1 ranks

        return MPI


_world: World | None = None
_blas_limits: Any = None  # threadpoolctl's limiter; kept alive for the run's lifetime
blas_threads: int | None = None  # BLAS threads per rank, once a world of N > 1 ranks set it


def world() -> World:
    """This run's world: MPI's world communicator when launched by ``mpiexec -n N`` with N > 1
    (MPI is started on the first call), else the one-process world.

    With N > 1 it also limits each rank's BLAS to its share of this machine's cores (one thread
    each when the ranks fill the machine, the point of the exercise: small matrix products use one
    core well and two poorly), and makes an uncaught exception in any rank stop every rank."""
    global _world, _blas_limits, blas_threads
    if _world is not None:
        return _world
    if launched_ranks() == 1:
        _world = World()
        return _world
    try:
        from mpi4py import MPI  # noqa: PLC0415 - optional dependency
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError as e:
        raise DistributedError(f"launched as {launched_ranks()} ranks, but {e.name} is not installed: "
                               f"pip install -e \".[mpi]\"") from e
    _world = World(MPI.COMM_WORLD)
    blas_threads = cores_per_rank(MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size())
    _blas_limits = threadpool_limits(limits=blas_threads, user_api="blas")
    sys.excepthook = _abort_on_uncaught
    return _world


def cores_per_rank(ranks_here: int) -> int:
    """This machine's cores (those this process may run on) shared among the ``ranks_here`` ranks
    that run on it: each rank's BLAS threads (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)) // ranks_here)


def started_world() -> World | None:
    """The world if :func:`world` has started one of N > 1 ranks, else None (nothing started)."""
    return _world if _world is not None and _world.size > 1 else None


def _abort_on_uncaught(kind: type, error: BaseException, tb: Any) -> None:
    sys.__excepthook__(kind, error, tb)
    if _world is not None:
        _world.abort(1)


def optimizer_order(optimizer: Any, params: Iterable[Tensor]) -> list[Tensor]:
    """The optimizer's parameters, group by group, then those of ``params`` it does not hold. Packed
    in this order into a data-parallel step's flat gradient buffer (distributed.py, fast/parallel.py),
    each group's gradients come back as one consecutive piece of it, which fast.AdamW updates from
    without copying them into a buffer of its own."""
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    known = {id(p) for p in ordered}
    return ordered + [p for p in params if id(p) not in known]
