"""What tests/test_distributed.py runs under ``mpiexec -n 2`` (a script, not a test module).

    python tests/mpi_worker.py step OUT [--shared] [--break skip-allreduce|no-divide|no-sum|skip-part|no-clip]
        five data-parallel AdamW steps of a tiny float64 GPT (by the plain all-reduce, or with
        --shared by fast.SharedMemoryStep); rank 0 writes the losses and weights to OUT (an .npz)
        for the test to compare with one process on the same global batches
    python tests/mpi_worker.py odd OUT
        five steps of a model whose parameters are used unevenly, by the shared-memory step and
        by the plain all-reduce side by side
    python tests/mpi_worker.py grads OUT
        one all-reduce of a parameter every rank used, one only rank 0 used and one nobody used
    python tests/mpi_worker.py train-die|train-raise|train-bug|train-nan|mismatch OUT_DIR
        a short training run in which rank 1 is killed, raises an error, or hits a bug (TypeError)
        at its third step, or the loss becomes NaN, or the ranks are seeded apart (their
        parameters differ): each must end in a clear error, never a hang
    python tests/mpi_worker.py train-float64 OUT_DIR
        a short float64 training run (dropout 0) whose numbers a test compares with one process
    python tests/mpi_worker.py train-who OUT_DIR
        a short run with dropout that records, per rank, who saved, wrote metrics, sampled, and
        the first dropout draw of every step
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy

import minigpt
from minigpt import backend, checkpoint, cli, distributed, fast, nn
from minigpt import train as train_module
from minigpt.data import get_batch
from minigpt.tensor import Tensor
from minigpt.train import build_model, build_optimizer, train
from minigpt.training.config import TrainConfig
from minigpt.training.steps import data_parallel_step, parallel_train_step, train_step

STEPS, BATCH, BLOCK = 5, 6, 8


def five_steps(world: distributed.World | None, shared: bool = False) -> tuple[list[float], dict[str, numpy.ndarray]]:
    """Five AdamW steps of a tiny float64 GPT on fixed global batches of BATCH rows: one process
    (``world`` None, the training loop's train_step) or this rank's share of them, by the plain
    all-reduce (parallel_train_step) or, with ``shared``, by fast.SharedMemoryStep."""
    minigpt.manual_seed(0)
    cfg = TrainConfig.preset(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, batch_size=BATCH,
                             learning_rate=1e-2, dtype="float64")
    model = build_model(cfg, 65).to("cpu", numpy.float64)
    optimizer = build_optimizer(model, cfg)
    rng = numpy.random.default_rng(0)
    ids = rng.integers(0, 65, 5000)
    losses = []
    step = None
    if shared:
        step, how = data_parallel_step(model, optimizer, world)
        assert isinstance(step, fast.SharedMemoryStep), f"the shared-memory twin did not start: {how}"
    for _ in range(STEPS):
        x, y = get_batch(ids, BATCH, BLOCK, rng)  # (B, T): the same global batch on every rank
        if world is None:
            losses.append(train_step(model, optimizer, x, y, cfg.grad_clip))
        elif step is not None:
            losses.append(step(x, y, cfg.grad_clip, lambda: False)[0])
        else:
            losses.append(parallel_train_step(model, optimizer, x, y, cfg.grad_clip, world, lambda: False)[0])
    return losses, {k: backend.to_numpy(v) for k, v in model.state_dict().items()}


class BrokenComm:
    """MPI's communicator with a broken all-reduce, for the tests of the tests: ``skip-allreduce``
    leaves each rank with its own gradient divided by N (what it packed), ``no-divide`` hands back N
    times the mean (as if the ranks had not divided by N before the sum)."""

    def __init__(self, comm, how: str) -> None:
        self.comm, self.how = comm, how

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def Allreduce(self, send, recv, op):  # noqa: N802 - mpi4py's name
        if self.how == "no-divide":
            self.comm.Allreduce(send, recv, op=op)
            recv *= self.comm.Get_size()


def break_shared_step(how: str) -> None:
    """fast.SharedMemoryStep with a part of its work missing, for the tests of the tests: ``no-sum``
    leaves slot 0 as rank 0's gradient ÷ N (the other ranks' slots never added), ``skip-part`` has
    the last rank skip its AdamW update, ``no-clip`` never scales the gradients."""
    from minigpt.fast import parallel  # noqa: PLC0415

    step = parallel.SharedMemoryStep
    if how == "no-sum":
        step.sum_part = lambda self: None
    elif how == "no-clip":
        step.clip_part = lambda self, max_norm, has: None
    elif how == "skip-part":
        update = step.update_part
        step.update_part = lambda self, has: None if self.world.rank == self.world.size - 1 else update(self, has)


def run_steps(out: Path, broken: str | None, shared: bool) -> None:
    world = distributed.world()
    if broken in ("skip-allreduce", "no-divide"):
        world.comm = BrokenComm(world.comm, broken)
    elif broken:
        break_shared_step(broken)
    losses, params = five_steps(world, shared)
    if world.rank == 0:
        numpy.savez(out, losses=numpy.array(losses), **params)


def run_grads(out: Path) -> None:
    """used: every rank's gradient is its rank + 1; rank0_only: rank 0's is 4, rank 1 has none;
    unused: no rank has one. Rank 0 writes what the all-reduce left."""
    world = distributed.world()
    used, rank0_only, unused = (nn.Parameter(numpy.zeros(3)) for _ in range(3))
    used.grad = numpy.full(3, world.rank + 1.0)
    rank0_only.grad = numpy.full(3, 4.0) if world.rank == 0 else None
    loss, stop = world.average_gradients([used, rank0_only, unused], Tensor(numpy.float64(world.rank)), world.rank == 1)
    if world.rank == 0:
        out.write_text(json.dumps({"used": used.grad.tolist(), "rank0_only": rank0_only.grad.tolist(),
                                   "unused": unused.grad, "loss": loss, "stop": stop}))


class Odd(nn.Module):
    """A model whose parameters are used unevenly: ``a`` by every rank, ``b`` only by rank 0's
    rows (rank 1 has no gradient for it), ``c`` by every rank but outside the optimizer (clipped,
    never updated), ``d`` by nobody (no gradient anywhere: AdamW leaves it and its step count
    alone), ``e`` frozen (requires_grad False) in the middle of an optimizer group. ``f``, in the
    optimizer but not in the model, is not clipped (the clip takes the model's parameters)."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        rng = numpy.random.default_rng(0)
        self.a = nn.Parameter(rng.standard_normal((3, 4)))
        self.b = nn.Parameter(rng.standard_normal(5))
        self.c = nn.Parameter(rng.standard_normal(4))
        self.d = nn.Parameter(rng.standard_normal((2, 2)))
        self.e = nn.Parameter(rng.standard_normal(4))
        self.e.requires_grad = False
        self.rank = rank

    def forward(self, x: numpy.ndarray, y: numpy.ndarray, f: Tensor) -> tuple[None, Tensor]:
        h = Tensor(x) @ self.a + self.c + self.e + f  # (rows, 4)
        loss = ((h - Tensor(y)) * (h - Tensor(y))).mean()
        if self.rank == 0:
            loss = loss + (self.b * self.b).sum() * 0.1
        return None, loss


class Ordered(nn.Module):
    """Three parameters whose squared gradient norms are 1e16, 1 and 1 (the loss is linear in
    them): added in the model's order, (1e16 + 1) + 1 = 1e16 in float64; in the optimizer's
    order (small ones first), 1e16 + 2. The clip factor then differs in its last bits."""

    def __init__(self) -> None:
        super().__init__()
        self.big, self.small, self.tiny = (nn.Parameter(numpy.ones(1)) for _ in range(3))

    def forward(self, x: numpy.ndarray, y: numpy.ndarray) -> tuple[None, Tensor]:
        return None, (self.big * 1e8 + self.small + self.tiny).sum() * float(len(x) > 0)


def odd_models(kind: str, rank: int) -> tuple[nn.Module, Any, list]:
    if kind == "ordered":
        model = Ordered()
        return model, fast.AdamW([{"params": [model.small, model.tiny]}, {"params": [model.big]}], lr=0.05), []
    model, f = Odd(rank), nn.Parameter(numpy.zeros(4))
    optimizer = fast.AdamW([{"params": [model.a, model.e, model.d, f], "weight_decay": 0.1},
                            {"params": [model.b], "weight_decay": 0.0}], lr=0.05)
    forward = model.forward
    model.forward = lambda x, y: forward(x, y, f)  # f reaches the loss from outside the model
    return model, optimizer, [("f", f)]


def run_odd(out: Path) -> None:
    """Five steps of Odd and of Ordered by fast.SharedMemoryStep and by the plain all-reduce
    (parallel_train_step), side by side in one mpiexec; rank 0 writes their weights, step counts,
    moments, gradients and losses. Then rank 0 alone gives a parameter a new array, and the
    shared step must raise the same error on every rank (no rank left waiting); so must a
    parameter unfrozen on every rank."""
    world = distributed.world()
    rng = numpy.random.default_rng(1)
    batches = [(rng.standard_normal((4, 3)), rng.standard_normal((4, 4))) for _ in range(STEPS)]
    results = {}
    for name in ("odd", "ordered"):
        for kind in ("shared", "plain"):
            model, optimizer, extra = odd_models(name, world.rank)
            if kind == "shared":
                step, how = data_parallel_step(model, optimizer, world)
                assert isinstance(step, fast.SharedMemoryStep), how
            else:
                step = lambda x, y, clip, stop: parallel_train_step(model, optimizer, x, y, clip, world, stop)  # noqa: E731
            losses = [step(x, y, 0.5, lambda: False)[0] for x, y in batches]
            for pname, p in list(model.named_parameters()) + extra:
                key = f"{name}.{kind}.{pname}"
                results[key] = p.data.copy()
                results[f"{key}.grad"] = numpy.array([]) if p.grad is None else p.grad.copy()
                st = optimizer.state.get(id(p))
                results[f"{key}.step"] = numpy.array(-1 if st is None else st["step"])
                if st is not None:
                    results[f"{key}.m"], results[f"{key}.v"] = st["exp_avg"].copy(), st["exp_avg_sq"].copy()
            results[f"{name}.{kind}.losses"] = numpy.array(losses)
    model, optimizer, _ = odd_models("odd", world.rank)
    step, _ = data_parallel_step(model, optimizer, world)
    step(*batches[0], 0.5, lambda: False)
    before, block = {k: v.copy() for k, v in model.state_dict().items()}, step.block
    step.close()  # private arrays again, the same values; the plain step goes on from there
    step.close()  # a second close does nothing
    try:
        step(*batches[1], 0.5, lambda: False)
        results["after-close"] = numpy.array("")
    except RuntimeError as e:
        results["after-close"] = numpy.array(str(e))
    results["closed.private"] = numpy.array([p.data.base is not block for p in model.parameters()])
    results["closed.same"] = numpy.array([numpy.array_equal(v, model.state_dict()[k]) for k, v in before.items()])
    parallel_train_step(model, optimizer, *batches[1], 0.5, world, lambda: False)
    from minigpt.fast import parallel  # noqa: PLC0415

    fits = parallel.shared_memory_fits
    parallel.shared_memory_fits = lambda nbytes: False  # as a /dev/shm too small for the block
    step, how = data_parallel_step(model, optimizer, world)
    parallel.shared_memory_fits = fits
    results["refused"] = numpy.array([isinstance(step, fast.SharedMemoryStep), how], dtype=object).astype(str)
    for change in ("new-array-on-rank-0", "unfrozen"):
        model, optimizer, _ = odd_models("odd", world.rank)
        step, _ = data_parallel_step(model, optimizer, world)
        step(*batches[0], 0.5, lambda: False)
        if change == "unfrozen":
            model.e.requires_grad = True
        elif world.rank == 0:
            model.a.data = model.a.data.copy()
        try:
            step(*batches[1], 0.5, lambda: False)
            error = ""
        except distributed.EveryRankError as e:
            error = str(e)
        results[f"error.{change}"] = numpy.array(world.allgather(error))
    if world.rank == 0:
        numpy.savez(out, **results)


def record_who(out_dir: Path, rank: int) -> None:
    """Count, on this rank, the calls that should happen on rank 0 alone, and keep the first
    dropout draw of each step (minigpt.backend.uniform) to compare across ranks."""
    calls: dict[str, Any] = {"save": 0, "write_metrics": 0, "plot_metrics": 0, "sample_chars": 0, "draws": []}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    checkpoint.save = counted("save", checkpoint.save)  # this worker's process only
    train_module.write_metrics = counted("write_metrics", train_module.write_metrics)
    train_module.plot_metrics = counted("plot_metrics", train_module.plot_metrics)
    generate_text = train_module.generate_text

    def sampled(model, tokenizer, prompt, n_chars, **kw):
        calls["sample_chars"] += n_chars
        return generate_text(model, tokenizer, prompt, n_chars, **kw)

    train_module.generate_text = sampled
    uniform, start = backend.uniform, backend.start_host_stream

    def first_draw(*args, **kwargs):
        u = uniform(*args, **kwargs)
        if calls.pop("fresh", False):
            calls["draws"].append(float(u.reshape(-1)[0]))
        return u

    def started(*key):
        calls["fresh"] = True
        return start(*key)

    backend.uniform, backend.start_host_stream = first_draw, started
    import atexit  # noqa: PLC0415

    atexit.register(lambda: (out_dir / f"calls-{rank}.json").write_text(json.dumps(calls)))


def run_training(mode: str, out_dir: Path) -> int:
    rank = distributed.launched_rank()
    settings = dict(out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8,
                    max_iters=20, lr_decay_iters=20, eval_interval=10, eval_iters=2, sample_chars=10,
                    seed=1337 + (rank if mode == "mismatch" else 0))
    if mode == "train-float64":
        settings.update(dtype="float64")
    if mode == "train-who":
        settings.update(dropout=0.2)
        out_dir.mkdir(parents=True, exist_ok=True)
        record_who(out_dir, rank)
    cfg = TrainConfig.preset(**settings)
    calls = {"n": 0}
    if mode == "train-nan":  # the all-reduced loss of the third step is NaN, on every rank alike
        shared_step = fast.SharedMemoryStep.__call__

        def nan_on_third(self, *args):  # the shared-memory step's loss (training closes it on the error)
            lossf, stop = shared_step(self, *args)
            calls["n"] += 1
            return (float("nan") if calls["n"] == 3 else lossf), stop

        fast.SharedMemoryStep.__call__ = nan_on_third

    def should_stop() -> bool:
        calls["n"] += mode != "train-nan"
        if rank == 1 and calls["n"] == 3:
            if mode == "train-die":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "train-raise":
                raise ValueError("rank 1 failed on purpose")
            if mode == "train-bug":
                raise TypeError("a bug on rank 1")
        return False

    def go() -> int:
        result = train(cfg, should_stop=should_stop)
        if rank == 0:
            (out_dir / "result.json").write_text(json.dumps({"full_val": result.full_val_loss,
                                                             "best_val": result.best_val_loss}))
        return 0

    return cli.run(go)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["step", "grads", "odd", "train-die", "train-raise", "train-bug", "train-nan", "mismatch",
                                    "train-float64", "train-who"])
    p.add_argument("out", type=Path)
    p.add_argument("--break", dest="broken", choices=["skip-allreduce", "no-divide", "no-sum", "skip-part", "no-clip"])
    p.add_argument("--shared", action="store_true", help="step: by fast.SharedMemoryStep")
    args = p.parse_args()
    if args.mode == "step":
        run_steps(args.out, args.broken, args.shared)
        return 0
    if args.mode == "odd":
        run_odd(args.out)
        return 0
    if args.mode == "grads":
        run_grads(args.out)
        return 0
    return run_training(args.mode, args.out)


if __name__ == "__main__":
    sys.exit(main())
