"""Fast twin of the data-parallel step (``train.parallel_train_step``) for ranks on one machine.

Read minigpt/distributed.py first: it is the math. There, after its backward pass, each rank packs
its gradient ÷ N into a buffer, MPI's all-reduce sums the N buffers (on one machine: copies
through shared memory, and additions), and then every rank clips the same sum and runs the same
AdamW update over all the weights: the machine does that work N times, once per rank.

Ranks on one machine can share memory (an MPI-3 *shared window*: one block of memory that each
rank maps into its own address space). Here that block holds the optimizer's weights, AdamW's two
moments, one gradient slot per rank and one for their sum, and the work after backward is divided
instead of repeated. Rank r owns a run of consecutive parameters, about 1/N of the elements
(:func:`split_evenly`):

    1. every rank writes its gradient ÷ N into its own slot          then a small all-reduce: loss,
                                                                      stop flag, who has a gradient
    2. rank r adds the N slots over its part, into the sum, and
       the squared norm of each parameter it owns                    then a small all-reduce of
                                                                      those norms: the clip factor
    3. rank r clips its part and runs AdamW on its part of the
       shared weights and moments                                     then a barrier

After the barrier every rank sees the new weights: there is one copy of them. Each element is
summed, clipped and updated once on the machine instead of N times (as ZeRO's sharded optimizer,
but with nothing to gather: the shards are one block), and no gradient travels through MPI. The
numbers are the plain step's: the slots hold what the all-reduce's buffers held, added in rank
order (for N = 2, a + b, exactly the all-reduce's sum), the squared norms are added in the order
clip_grad_norm_ adds them, and AdamW's update of an element reads only that element
(fast.optim.adamw_update), so updating it in a part changes nothing. Timed against the plain
all-reduce by ``python benchmarks/bench_train.py --ranks 2 --ranks-plain`` (docs/performance.md).

It runs where :meth:`SharedMemoryStep.start` says it can (else the plain all-reduce serves, and
start says why): N > 1 ranks, all on this machine, the fast twins on (NumPy, not
``fast.disabled()``, decided at the start), the optimizer ``fast.AdamW`` (not the reference ``optim.AdamW`` of ``--reference``),
one dtype for every trainable parameter, and room for the block in /dev/shm. Each of the
optimizer's trainable parameters' ``.data`` and AdamW moments becomes a view of the shared block: writing into one
(``Module.load_state_dict`` copies in place) writes the one copy every rank reads. A parameter
given a new array afterwards (``optimizer.load_state_dict``, a change of dtype or device), or
frozen or unfrozen, is an error on every rank at the next step, never a silently private copy.
After a step each parameter's ``.grad`` is the summed gradient, as the plain step leaves it:
read-only views of the shared sum for the optimizer's parameters, copies for the others.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from minigpt import backend, distributed, optim
from minigpt.distributed import EveryRankError
from minigpt.fast.optim import AdamW, adamw_update
from minigpt.fast.switch import enabled

if TYPE_CHECKING:  # for the annotations only
    from minigpt.distributed import World
    from minigpt.nn import Module
    from minigpt.tensor import Tensor

SHARED_MEMORY_DIR = "/dev/shm"  # where MPICH and Open MPI map a shared window on Linux


def split_evenly(sizes: list[int], parts: int) -> list[int]:
    """Boundaries b_0 = 0 <= b_1 <= ... <= b_parts = len(sizes): part r is the items b_r..b_{r+1}-1,
    each part's total size as near 1/parts of the whole as whole items allow (every item in
    exactly one part, in order)."""
    ends = [0]
    for s in sizes:
        ends.append(ends[-1] + s)
    bounds = [0]
    for r in range(1, parts):
        target = ends[-1] * r / parts
        best = min(range(bounds[-1], len(sizes) + 1), key=lambda i: abs(ends[i] - target))
        bounds.append(best)
    return bounds + [len(sizes)]


def shared_memory_fits(nbytes: int) -> bool:
    """Whether ``nbytes`` fit in the free space of /dev/shm (True where there is none to ask).
    A shared window larger than that is not an error when it is made: the process is killed
    (SIGBUS) when it first writes past the room there was (Docker's default /dev/shm is 64 MB)."""
    try:
        st = os.statvfs(SHARED_MEMORY_DIR)
    except OSError:
        return True
    return st.f_bavail * st.f_frsize >= nbytes


class SharedMemoryStep:
    """``train.parallel_train_step`` for ranks that share one machine (see the module docstring).
    Build it with :meth:`start`; call it as ``step(x, y, grad_clip, should_stop)``; ``close()``
    it (collective) to give the parameters private arrays again and free the shared block."""

    @classmethod
    def start(cls, world: World, model: Module, optimizer: optim.AdamW) -> SharedMemoryStep | str:
        """Collective (every rank calls it): the shared step for ``model`` and ``optimizer``, or
        the reason the plain all-reduce must serve, as a short phrase."""
        params = distributed.optimizer_order(optimizer, model.parameters())  # the layout of the shared block
        trainable = [p for p in params if p.requires_grad]
        reason = ("one rank" if world.size == 1 or world.comm is None else
                  "no parameter to train" if not trainable else
                  "the fast twins are off" if not enabled(trainable[0].data) else
                  "the optimizer is the reference optim.AdamW" if not isinstance(optimizer, AdamW) else
                  "parameters of several dtypes" if len({p.dtype for p in trainable}) != 1 else "")
        if reason:
            return reason
        from mpi4py import MPI  # noqa: PLC0415 - only ever imported by a run of N > 1 ranks

        node = world.comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks on this machine
        if node.Get_size() != world.size:
            node.Free()
            return "the ranks span several machines"
        n = sum(p.size for p in trainable)
        nbytes = (world.size + 4) * n * trainable[0].dtype.itemsize  # at most: N + 1 slots, weights, m, v
        if not node.bcast(shared_memory_fits(nbytes) if node.Get_rank() == 0 else None, root=0):
            node.Free()
            return f"{SHARED_MEMORY_DIR} has less than the {nbytes / 2**20:.0f} MiB the shared block needs"
        return cls(world, node, model, optimizer, params)

    def __init__(self, world: World, node: Any, model: Module, optimizer: optim.AdamW, params: list[Tensor]) -> None:
        """Called by :meth:`start`: ``params`` is distributed.optimizer_order(optimizer, model.parameters())."""
        from mpi4py import MPI  # noqa: PLC0415

        self.mpi, self.world, self.node, self.model, self.optimizer = MPI, world, node, model, optimizer
        # what must not change while the weights are shared: which of the model's and the
        # optimizer's tensors train
        self.watched = [(p, p.requires_grad) for p in params]
        self.params = params = [p for p in params if p.requires_grad]
        n_ranks, rank = world.size, world.rank
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.n_opt = sum(id(p) in in_optimizer for p in params)  # the optimizer's come first
        sizes = [p.size for p in params]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        n, n_opt_elems = self.offsets[-1], self.offsets[self.n_opt]
        dtype = params[0].dtype
        total = (n_ranks + 1) * n + 3 * n_opt_elems  # N gradient slots and their sum, then weights, m, v
        self.window = MPI.Win.Allocate_shared(total * dtype.itemsize if node.Get_rank() == 0 else 0,
                                              dtype.itemsize, comm=node)
        memory, _ = self.window.Shared_query(0)
        self.block = backend.numpy.ndarray((total,), dtype=dtype, buffer=memory)
        self.window.Lock_all(MPI.MODE_NOCHECK)  # a passive epoch for Sync(): our own barriers order the writes
        self.slots = self.block[:n_ranks * n].reshape(n_ranks, n)  # (N, n): slot r is rank r's gradient ÷ N
        self.summed = self.block[n_ranks * n:(n_ranks + 1) * n]  # (n,): Σ_r slot r, the mean gradient
        weights, m, v = (self.block[(n_ranks + 1) * n + i * n_opt_elems:(n_ranks + 1) * n + (i + 1) * n_opt_elems]
                         for i in range(3))
        self.weights, self.m, self.v = weights, m, v

        def piece(flat: Any, i: int) -> Any:
            return flat[self.offsets[i]:self.offsets[i + 1]].reshape(params[i].shape)

        if node.Get_rank() == 0:  # one rank copies the (checked equal) weights and any loaded moments in
            for i, p in enumerate(params[:self.n_opt]):
                state = optimizer.state.get(id(p))
                piece(weights, i)[...] = p.data
                piece(m, i)[...] = 0.0 if state is None else state["exp_avg"]
                piece(v, i)[...] = 0.0 if state is None else state["exp_avg_sq"]
        self.sync()
        for i, p in enumerate(params[:self.n_opt]):  # from here on, every rank's weights are the shared ones
            p.data = piece(weights, i)
            if id(p) in optimizer.state:
                optimizer.state[id(p)].update(exp_avg=piece(m, i), exp_avg_sq=piece(v, i))
        self.views = {"grad": [piece(self.summed, i) for i in range(len(params))],
                      "m": [piece(m, i) for i in range(self.n_opt)], "v": [piece(v, i) for i in range(self.n_opt)]}
        self.handed = [piece(self.summed, i) for i in range(self.n_opt)]  # the .grad views: read-only
        for g in self.handed:
            g.flags.writeable = False
        self.mine = [piece(self.slots[rank], i).reshape(-1) for i in range(len(params))]
        bounds = split_evenly(sizes, n_ranks)
        self.part = range(bounds[rank], bounds[rank + 1])  # the parameters this rank sums, clips, updates
        # clip_grad_norm_ adds the squared norms in the model's order, over the model's parameters
        index = {id(p): i for i, p in enumerate(params)}
        self.clip_order = [index[id(p)] for p in model.parameters() if id(p) in index]
        self.clipped = set(self.clip_order)
        self.groups = []  # (group, its trainable parameters' indices into params: consecutive)
        for group in optimizer.param_groups:
            members = [index[id(p)] for p in group["params"] if id(p) in index]
            if members:
                self.groups.append((group, range(members[0], members[-1] + 1)))
        # per parameter: has a gradient; then the loss, the stop flag, and "something changed"
        self.flags = backend.numpy.zeros(len(params) + 3, dtype=dtype)
        self.squares = backend.numpy.zeros(len(params), dtype=backend.numpy.float64)
        self.closed = False

    def sync(self) -> None:
        """Every rank's writes to the shared block so far are seen by every rank after this
        (collective: a barrier between two memory fences)."""
        self.window.Sync()
        self.node.Barrier()
        self.window.Sync()

    def __call__(self, x: Any, y: Any, grad_clip: float, should_stop: Callable[[], bool]) -> tuple[float, bool]:
        """One data-parallel step on the global batch (x, y): returns the global batch's loss and
        whether any rank's ``should_stop()`` said True, as ``train.parallel_train_step``."""
        if self.closed:
            raise RuntimeError("this shared-memory step was closed: its shared block is freed")
        world, xp = self.world, backend.numpy
        mine = world.shard(len(x))  # (B, T) -> (B/N, T): this rank's contiguous rows
        _, loss = self.model(x[mine], y[mine])
        self.optimizer.zero_grad()
        loss.backward()
        k, flags = len(self.params), self.flags
        for i, p in enumerate(self.params):  # 1. this rank's gradient ÷ N into its slot
            if p.grad is None:
                self.mine[i][...] = 0.0
            else:
                xp.divide(p.grad.reshape(-1), world.size, out=self.mine[i])
            flags[i] = p.grad is not None
        flags[k], flags[k + 1], flags[k + 2] = loss.data / world.size, float(should_stop()), self.changed()
        self.window.Sync()
        self.node.Allreduce(self.mpi.IN_PLACE, flags, op=self.mpi.SUM)  # every slot is written after it
        self.window.Sync()
        if flags[k + 2] > 0:  # every rank raises alike: no rank is left waiting in a collective
            raise EveryRankError("a parameter or its AdamW state was given a new array, or a parameter was frozen "
                                 "or unfrozen, during a data-parallel run on one machine: the ranks would no "
                                 "longer train the one shared copy of the weights")
        has = [bool(f > 0) for f in flags[:k]]
        self.sum_part()  # 2. the sum <- Σ_r slot r over this rank's part
        if grad_clip > 0:
            self.clip_part(grad_clip, has)
        self.update_part(has)  # 3.
        self.sync()  # every part updated: the new weights, and the whole mean gradient in the sum
        for i, p in enumerate(self.params):
            # the summed gradient, as the plain step leaves it: read-only views of the sum for the
            # optimizer's parameters (its zero_grad forgets them), copies for the others (their
            # gradients add up over steps). The sum is next written after the next step's
            # all-reduce of flags, when every rank has finished this step's reading.
            p.grad = None if not has[i] else self.handed[i] if i < self.n_opt else self.views["grad"][i].copy()
        return float(flags[k]), bool(flags[k + 1] > 0)

    def sum_part(self) -> None:
        """The sum <- slot 0 + slot 1 + ... + slot N-1, in that order, over this rank's part."""
        lo, hi = self.offsets[self.part.start], self.offsets[self.part.stop]
        total = self.summed[lo:hi]
        backend.numpy.add(self.slots[0, lo:hi], self.slots[1, lo:hi], out=total)
        for r in range(2, self.world.size):
            total += self.slots[r, lo:hi]

    def clip_part(self, max_norm: float, has: list[bool]) -> None:
        """clip_grad_norm_ (optim.py) over the summed gradient: each rank squares its own parameters'
        gradients, a small all-reduce hands every rank all of them (each is non-zero on one rank
        only: x + 0 = x), they are added in clip_grad_norm_'s order, and each rank scales its part."""
        xp, squares, grads = backend.numpy, self.squares, self.views["grad"]
        squares[:] = 0.0
        for i in self.part:
            if has[i] and i in self.clipped:
                squares[i] = xp.vdot(grads[i].ravel(), grads[i].ravel())
        self.node.Allreduce(self.mpi.IN_PLACE, squares, op=self.mpi.SUM)
        order = [i for i in self.clip_order if has[i]]
        if not order:
            return
        total = xp.sqrt(xp.cumsum(squares[order])[-1])
        factor = optim.clip_coefficient(total, max_norm).astype(self.flags.dtype)
        for i in self.part:
            if has[i] and i in self.clipped:
                grads[i] *= factor

    def update_part(self, has: list[bool]) -> None:
        """AdamW (fast.optim.adamw_update) over this rank's part of the shared weights and moments.
        Every rank counts every parameter's step (the counts are each rank's own, for its checkpoint)."""
        for i in range(self.n_opt):
            if has[i]:
                state = self.optimizer.state.get(id(self.params[i]))
                if state is None:  # a first step: the shared moments are zeros
                    state = self.optimizer.state[id(self.params[i])] = {
                        "step": 0, "exp_avg": self.views["m"][i], "exp_avg_sq": self.views["v"][i]}
                state["step"] += 1
        o = self.offsets
        for group, members in self.groups:
            mine = range(max(members.start, self.part.start), min(members.stop, self.part.stop))
            if not mine:
                continue
            steps = {self.optimizer.state[id(self.params[i])]["step"] for i in mine if has[i]}
            if all(has[i] for i in mine) and len(steps) == 1:  # one update over the whole run of them
                sl = slice(o[mine.start], o[mine.stop])
                adamw_update(self.weights[sl], self.summed[sl], self.m[sl], self.v[sl], group, steps.pop())
                continue
            for i in mine:  # some without a gradient, or at another step: one parameter at a time
                if has[i]:
                    sl = slice(o[i], o[i + 1])
                    t = self.optimizer.state[id(self.params[i])]["step"]
                    adamw_update(self.weights[sl], self.summed[sl], self.m[sl], self.v[sl], group, t)

    def changed(self) -> bool:
        """Whether, on this rank, a parameter or its moments no longer view the shared block, or
        a tensor was frozen or unfrozen since the start."""
        for p, trains in self.watched:
            if p.requires_grad != trains:
                return True
        for i, p in enumerate(self.params[:self.n_opt]):
            state = self.optimizer.state.get(id(p))
            if p.data.base is not self.block or (state is not None and (state["exp_avg"].base is not self.block
                                                                        or state["exp_avg_sq"].base is not self.block)):
                return True
        return False

    def close(self) -> None:
        """Collective: every parameter, moment and gradient gets a private copy of its array again,
        and the shared block is freed (a second close does nothing; a step after it is an error)."""
        if self.closed:
            return
        xp = backend.numpy
        for p in self.params[:self.n_opt]:
            p.data = xp.array(p.data, copy=True)
            p.grad = None if p.grad is None else xp.array(p.grad, copy=True)
            state = self.optimizer.state.get(id(p))
            if state is not None:
                state.update(exp_avg=xp.array(state["exp_avg"], copy=True),
                             exp_avg_sq=xp.array(state["exp_avg_sq"], copy=True))
        self.sync()  # no rank frees the block while another still copies out of it
        self.closed = True
        # no view of the block may outlive it: reading one after Free would read unmapped memory
        self.block = self.slots = self.summed = self.weights = self.m = self.v = None
        self.mine, self.handed, self.views = [], [], {}
        self.window.Unlock_all()
        self.window.Free()
        self.node.Free()
