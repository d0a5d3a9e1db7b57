"""What tests/test_distributed.py runs under ``mpiexec -n 2`` (a script, not a test module).

    python tests/mpi_worker.py step OUT [--break skip-allreduce|no-divide]
        five data-parallel AdamW steps of a tiny float64 GPT; rank 0 writes the losses and weights
        to OUT (an .npz) for the test to compare with one process on the same global batches
    python tests/mpi_worker.py train-die|train-raise|mismatch OUT_DIR
        a short training run in which rank 1 is killed, or raises, at its third step, or in which
        the ranks are seeded apart (their parameters differ): each must end in a clear error
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import numpy

import minigpt
from minigpt import backend, cli, distributed
from minigpt.data import get_batch
from minigpt.train import TrainConfig, build_model, build_optimizer, parallel_train_step, train, train_step

STEPS, BATCH, BLOCK = 5, 6, 8


def five_steps(world: distributed.World | None) -> tuple[list[float], dict[str, numpy.ndarray]]:
    """Five AdamW steps of a tiny float64 GPT on fixed global batches of BATCH rows: one process
    (``world`` None, the training loop's train_step) or this rank's share of them."""
    minigpt.manual_seed(0)
    cfg = TrainConfig.preset(n_layer=2, n_head=2, n_embd=16, block_size=BLOCK, batch_size=BATCH,
                             learning_rate=1e-2, dtype="float64")
    model = build_model(cfg, 65).to("cpu", numpy.float64)
    optimizer = build_optimizer(model, cfg)
    rng = numpy.random.default_rng(0)
    ids = rng.integers(0, 65, 5000)
    losses = []
    for _ in range(STEPS):
        x, y = get_batch(ids, BATCH, BLOCK, rng)  # (B, T): the same global batch on every rank
        if world is None:
            losses.append(train_step(model, optimizer, x, y, cfg.grad_clip))
        else:
            losses.append(parallel_train_step(model, optimizer, x, y, cfg.grad_clip, world, lambda: False)[0])
    return losses, {k: backend.to_numpy(v) for k, v in model.state_dict().items()}


class BrokenComm:
    """MPI's communicator with a broken all-reduce, for the tests of the tests: ``skip-allreduce``
    leaves each rank with its own gradient, ``no-divide`` hands back N times the mean."""

    def __init__(self, comm, how: str) -> None:
        self.comm, self.how = comm, how

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def Allreduce(self, send, recv, op):  # noqa: N802 - mpi4py's name
        if self.how == "no-divide":
            self.comm.Allreduce(send, recv, op=op)
            recv *= self.comm.Get_size()


def run_steps(out: Path, broken: str | None) -> None:
    world = distributed.world()
    if broken:
        world.comm = BrokenComm(world.comm, broken)
    losses, params = five_steps(world)
    if world.rank == 0:
        numpy.savez(out, losses=numpy.array(losses), **params)


def run_training(mode: str, out_dir: Path) -> int:
    rank = distributed.launched_rank()
    cfg = TrainConfig.preset(out_dir=str(out_dir), n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=8,
                             max_iters=20, lr_decay_iters=20, eval_interval=10, eval_iters=2, sample_chars=10,
                             seed=1337 + (rank if mode == "mismatch" else 0))
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        if rank == 1 and calls["n"] == 3:
            if mode == "train-die":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "train-raise":
                raise ValueError("rank 1 failed on purpose")
        return False

    def go() -> int:
        train(cfg, should_stop=should_stop)
        return 0

    return cli.run(go)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["step", "train-die", "train-raise", "mismatch"])
    p.add_argument("out", type=Path)
    p.add_argument("--break", dest="broken", choices=["skip-allreduce", "no-divide"])
    args = p.parse_args()
    if args.mode == "step":
        run_steps(args.out, args.broken)
        return 0
    return run_training(args.mode, args.out)


if __name__ == "__main__":
    sys.exit(main())
