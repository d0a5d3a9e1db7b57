"""Data parallelism over MPI (minigpt/distributed.py), tested under a real ``mpiexec -n 2``.

Two ranks on the same global batch take the same step as one process; a 2-rank training run
checkpoints, stops on a signal to one rank and resumes bit-identically; a bad batch size, a dead
rank, a failing rank and ranks with different parameters each end in a clear error, never a hang
(every wait here is bounded). Needs the mpi extra, which the test extra installs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy
import pytest

import mpi_worker
from minigpt import backend, checkpoint, distributed, optim
from minigpt.tensor import Tensor
from minigpt.train import train
from minigpt.training.config import TrainConfig
from minigpt.training.metrics import read_metrics

pytest.importorskip("mpi4py", reason="the mpi extra is not installed (pip install -e \".[mpi]\")")

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
TRAIN = REPO / "examples" / "train_shakespeare.py"
TIMEOUT = 120  # seconds: no test waits longer for a run of a few seconds
TINY = ["--n_layer", "1", "--n_head", "2", "--n_embd", "16", "--block_size", "16", "--batch_size", "8",
        "--eval_iters", "2", "--sample_chars", "10", "--warmup_iters", "5", "--learning_rate", "3e-3",
        "--dropout", "0.1"]


def mpiexec() -> str:
    """The mpiexec that came with the MPI library mpi4py uses (the mpich wheel puts it beside python)."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: pip install -e \".[mpi]\""
    return found


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI_", "HYDRA_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def launch(n: int, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([mpiexec(), "-n", str(n), sys.executable, *map(str, args)], capture_output=True,
                          text=True, timeout=TIMEOUT, env=clean_env(), cwd=cwd)


def weights(path: Path) -> dict[str, numpy.ndarray]:
    return checkpoint.load(path).model.state_dict()


# ----------------------------------------------------------------------------- one process
def test_without_a_launcher_the_world_is_one_process_and_needs_no_mpi4py():
    code = ("import sys; from minigpt import distributed as d; w = d.world(); "
            "print(w.rank, w.size, d.launched_ranks(), 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT,
                         env=clean_env(), check=True).stdout.split()
    assert out == ["0", "1", "1", "False"]


def test_the_one_process_world_leaves_gradients_alone():
    p = Tensor(numpy.ones(3), requires_grad=True)
    (p * p).sum().backward()
    grad = p.grad
    loss, stop = distributed.World().average_gradients([p], Tensor(numpy.float64(2.5)), stop=True)
    assert (loss, stop) == (2.5, True) and p.grad is grad
    assert distributed.World().shard(12) == slice(0, 12)


class SumOfTwoEqualRanks:
    """A communicator of 2 ranks, this one rank 0, whose all-reduce sums two copies of its buffer
    (as if the other rank had computed exactly the same): enough to run parallel_train_step in
    one process."""

    def Get_rank(self) -> int:  # noqa: N802 - mpi4py's names
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 2

    def Allreduce(self, send, recv, op) -> None:  # noqa: N802
        recv *= 2


def test_adamw_updates_straight_from_the_all_reduce_buffer():
    # the gradients are packed in the optimizer's order, so each parameter group's come back as
    # one piece of the buffer, which fast.AdamW reads without copying (fast.optim.consecutive_pieces)
    from unittest import mock

    from minigpt.fast import optim as fast_optim
    from minigpt.nn import GPT, GPTConfig
    from minigpt.train import build_optimizer
    from minigpt.training.steps import parallel_train_step

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    optimizer = build_optimizer(model, TrainConfig())
    order = distributed.optimizer_order(optimizer, model.parameters())
    assert [id(p) for p in order] == [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in order} == {id(p) for p in model.parameters()}
    world = distributed.World(SumOfTwoEqualRanks())
    rng = numpy.random.default_rng(0)
    x, y = rng.integers(0, 11, (4, 8)), rng.integers(0, 11, (4, 8))
    found = []

    def spy(arrays):
        flat = consecutive_pieces(arrays)
        found.append(None if flat is None else flat.base)
        return flat

    consecutive_pieces = fast_optim.consecutive_pieces
    with mock.patch.object(fast_optim, "consecutive_pieces", spy):
        for _ in range(3):
            parallel_train_step(model, optimizer, x, y, 1.0, world, lambda: False)
    assert len(found) == 6 and all(base is not None for base in found)  # both groups, every step
    assert all(found[i] is found[i + 1] for i in range(0, 6, 2))  # the two groups: pieces of one buffer


def test_parameters_outside_the_optimizer_are_packed_after_its_own():
    from minigpt import nn

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (nn.Parameter(numpy.zeros(2)) for _ in range(3))

    model = Two()
    optimizer = optim.AdamW([{"params": [model.c]}, {"params": [model.a]}])
    assert [id(p) for p in distributed.optimizer_order(optimizer, model.parameters())] == [id(model.c), id(model.a),
                                                                                    id(model.b)]


# ----------------------------------------------------------------------------- the step
@pytest.fixture(scope="module")
def one_process():
    """The losses and weights of five steps in one process (the training loop's train_step)."""
    return mpi_worker.five_steps(None)


def two_rank_steps(tmp_path: Path, broken: str | None = None, shared: bool = False, ranks: int = 2):
    out = tmp_path / "steps.npz"
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = launch(ranks, WORKER, "step", out, *(["--break", broken] if broken else []), *(["--shared"] if shared else []))
    assert r.returncode == 0, r.stderr
    saved = numpy.load(out)
    return list(saved["losses"]), {k: saved[k] for k in saved.files if k != "losses"}


def max_relative_difference(a: dict, b: dict) -> float:
    return max(float(numpy.max(numpy.abs(a[k] - b[k])) / numpy.max(numpy.abs(b[k]))) for k in b)


def test_two_ranks_take_the_step_of_one_process_on_the_same_global_batch(tmp_path, one_process):
    losses, params = two_rank_steps(tmp_path)
    ref_losses, ref_params = one_process
    assert params.keys() == ref_params.keys()
    numpy.testing.assert_allclose(losses, ref_losses, rtol=1e-12, atol=0)
    assert max_relative_difference(params, ref_params) < 1e-12


@pytest.mark.parametrize("broken", ["skip-allreduce", "no-divide"])
def test_the_step_comparison_catches_a_broken_all_reduce(tmp_path, one_process, broken):
    losses, params = two_rank_steps(tmp_path, broken)
    assert max_relative_difference(params, one_process[1]) > 1e-6


# ----------------------------------------------------------------------------- the shared-memory twin
def test_split_evenly_gives_every_parameter_to_one_rank_in_balanced_runs():
    from minigpt.fast.parallel import split_evenly

    rng = numpy.random.default_rng(0)
    for _ in range(200):
        sizes = list(rng.integers(1, 50, rng.integers(1, 12)))
        parts = int(rng.integers(1, 6))
        bounds = split_evenly(sizes, parts)
        assert len(bounds) == parts + 1 and bounds[0] == 0 and bounds[-1] == len(sizes)
        assert all(a <= b for a, b in zip(bounds, bounds[1:]))  # in order, each item once
        ends = numpy.concatenate([[0], numpy.cumsum(sizes)])
        for r in range(1, parts):  # each boundary as near its share as whole items allow
            assert abs(ends[bounds[r]] - ends[-1] * r / parts) <= max(sizes) / 2
    assert split_evenly([10, 1, 1, 10], 2) == [0, 2, 4]
    assert split_evenly([5], 3) == [0, 0, 1, 1] or split_evenly([5], 3) == [0, 1, 1, 1]


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_shared_memory_step_is_the_step_of_one_process(tmp_path, one_process, ranks):
    losses, params = two_rank_steps(tmp_path, shared=True, ranks=ranks)
    ref_losses, ref_params = one_process
    numpy.testing.assert_allclose(losses, ref_losses, rtol=1e-12, atol=0)
    assert max_relative_difference(params, ref_params) < 1e-12


def test_the_shared_memory_step_of_two_ranks_is_the_all_reduce_bit_for_bit(tmp_path):
    # slot 0 + slot 1 is the all-reduce's a + b; the squared norms add up in clip_grad_norm_'s order
    shared = two_rank_steps(tmp_path / "shared", shared=True)
    plain = two_rank_steps(tmp_path / "plain")
    assert shared[0] == plain[0]
    assert all(numpy.array_equal(shared[1][k], plain[1][k]) for k in plain[1])


@pytest.mark.parametrize("broken", ["no-sum", "skip-part", "no-clip"])
def test_the_step_comparison_catches_a_broken_shared_memory_step(tmp_path, one_process, broken):
    losses, params = two_rank_steps(tmp_path, broken, shared=True)
    assert max_relative_difference(params, one_process[1]) > 1e-6


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """The worker's ``odd`` run: models whose parameters are used unevenly, stepped by the
    shared-memory twin and by the plain all-reduce in one mpiexec."""
    out = tmp_path_factory.mktemp("odd") / "odd.npz"
    r = launch(2, WORKER, "odd", out)
    assert r.returncode == 0, r.stderr
    return dict(numpy.load(out))


@pytest.mark.parametrize("model", ["odd", "ordered"])
def test_the_shared_memory_step_takes_the_all_reduce_step_bit_for_bit(odd, model):
    # odd: a parameter used by one rank, one by nobody, one outside the optimizer, one frozen in
    # the middle of a group, one in the optimizer outside the model; ordered: squared norms whose
    # sum depends on the order they are added in (clip_grad_norm_ adds them in the model's order)
    plain = sorted(k for k in odd if k.startswith(f"{model}.plain."))
    assert {k.replace(".plain.", ".shared.", 1) for k in plain} == {k for k in odd if k.startswith(f"{model}.shared.")}
    for k in plain:
        assert numpy.array_equal(odd[k], odd[k.replace(".plain.", ".shared.", 1)]), k


def test_the_uneven_parameters_get_what_one_process_gives_them(odd):
    got = {k.replace("odd.shared.", ""): v for k, v in odd.items() if k.startswith("odd.shared.")}
    assert got["d.grad"].size == 0 and int(got["d.step"]) == -1  # nobody used d: no gradient, no step
    assert int(got["c.step"]) == -1 and got["c.grad"].size == 4  # c: clipped, not updated
    assert got["e.grad"].size == 0 and int(got["e.step"]) == -1  # e: frozen
    assert int(got["a.step"]) == int(got["b.step"]) == int(got["f.step"]) == mpi_worker.STEPS
    assert not numpy.array_equal(got["f"], numpy.zeros(4))  # f trained, from outside the model


def test_closing_the_shared_memory_step_leaves_private_weights_and_a_full_dev_shm_the_all_reduce(odd):
    assert odd["closed.private"].all() and odd["closed.same"].all()
    assert "closed" in str(odd["after-close"])  # an error, not a read of freed memory
    assert odd["refused"][0] == "False" and "MPI all-reduce (/dev/shm has less than" in odd["refused"][1]


def test_shared_memory_fits_asks_dev_shm(monkeypatch, tmp_path):
    from minigpt.fast import parallel

    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setattr(parallel, "SHARED_MEMORY_DIR", str(tmp_path))
    assert parallel.shared_memory_fits(1) and not parallel.shared_memory_fits(free * 2 + 2**30)
    monkeypatch.setattr(parallel, "SHARED_MEMORY_DIR", str(tmp_path / "none"))
    assert parallel.shared_memory_fits(2**60)  # nothing to ask: MPI will say


@pytest.mark.parametrize("change", ["new-array-on-rank-0", "unfrozen"])
def test_a_parameter_that_stops_being_shared_is_one_error_on_every_rank(odd, change):
    errors = [str(e) for e in odd[f"error.{change}"]]
    assert len(errors) == 2 and errors[0] == errors[1] and "shared copy of the weights" in errors[0]


def test_the_all_reduce_averages_every_gradient_and_leaves_unused_parameters_without_one(tmp_path):
    r = launch(2, WORKER, "grads", tmp_path / "grads.json")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "grads.json").read_text())
    assert got["used"] == [1.5] * 3  # (1 + 2) / 2
    assert got["rank0_only"] == [2.0] * 3  # (4 + 0) / 2: rank 1's rows did not use it
    assert got["unused"] is None  # as in one process: no gradient, so AdamW leaves it alone
    assert got["loss"] == 0.5 and got["stop"] is True  # mean of the losses 0 and 1; rank 1 asked to stop


# ----------------------------------------------------------------------------- training runs
def test_a_two_rank_training_run_is_the_one_process_run(tmp_path):
    """float64, no dropout: the same batches, evaluations, whole-val loss and weights as one process."""
    r = launch(2, WORKER, "train-float64", tmp_path / "two")
    assert r.returncode == 0, r.stderr
    cfg = TrainConfig.preset(out_dir=str(tmp_path / "one"), n_layer=1, n_head=2, n_embd=16, block_size=16,
                             batch_size=8, max_iters=20, lr_decay_iters=20, eval_interval=10, eval_iters=2,
                             sample_chars=10, dtype="float64")
    one = train(cfg, log=lambda m: None)
    two = json.loads((tmp_path / "two" / "result.json").read_text())
    assert two["full_val"] == pytest.approx(one.full_val_loss, rel=1e-12)
    assert two["best_val"] == pytest.approx(one.best_val_loss, rel=1e-12)
    rows = lambda d: [(m["iter"], m["train_loss"], m["val_loss"]) for m in read_metrics(d / "metrics.csv")]  # noqa: E731
    assert rows(tmp_path / "two") == rows(tmp_path / "one") and len(rows(tmp_path / "one")) == 3
    a, b = weights(tmp_path / "two" / "latest.npz"), weights(tmp_path / "one" / "latest.npz")
    assert max_relative_difference(a, b) < 1e-12


def test_rank_0_alone_writes_and_samples_and_each_rank_draws_its_own_dropout(tmp_path):
    r = launch(2, WORKER, "train-who", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    zero, one = (json.loads((tmp_path / "run" / f"calls-{k}.json").read_text()) for k in (0, 1))
    assert zero["save"] >= 4 and zero["write_metrics"] == 3 and zero["plot_metrics"] == 3 and zero["sample_chars"] == 10
    assert one["save"] == one["write_metrics"] == one["plot_metrics"] == one["sample_chars"] == 0
    assert len(zero["draws"]) == len(one["draws"]) == 20  # one stream a step
    assert all(a != b for a, b in zip(zero["draws"], one["draws"]))  # each rank its own masks
    assert len(set(zero["draws"])) == 20  # and each step its own


def test_host_streams_repeat_for_the_same_step_and_rank_and_differ_otherwise():
    def first(*key):
        backend.start_host_stream(*key)
        return float(backend.uniform((4,), "float64", "cpu")[0])
    assert first(3, 0) == first(3, 0) and len({first(3, 0), first(3, 1), first(4, 0)}) == 3



def rank_pids(marker: str) -> dict[int, int]:
    """{rank: pid} of the processes whose command line holds ``marker``, read from /proc."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_bytes().decode().split("\0") if "=" in kv)
        except OSError:
            continue
        if marker in cmd and "PMI_RANK" in env and "mpiexec" not in cmd:
            pids[int(env["PMI_RANK"])] = int(entry.name)
    return pids


def test_sigterm_to_one_rank_checkpoints_stops_every_rank_and_resumes_bit_identically(tmp_path):
    common = [*TINY, "--max_iters", "1500", "--lr_decay_iters", "1500", "--eval_interval", "500"]
    straight = launch(2, TRAIN, *common, "--out_dir", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    assert "data parallel: 2 ranks, 4 of the 8 rows" in straight.stdout
    assert "gradients summed by shared memory" in straight.stdout  # the fast twin ran

    out = tmp_path / "stopped"
    proc = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, str(TRAIN), *common, "--out_dir", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        deadline = time.time() + TIMEOUT
        while not (out / "latest.npz").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        pids = rank_pids(str(out))
        assert set(pids) == {0, 1}, pids
        os.kill(pids[1], signal.SIGTERM)  # rank 1 alone gets the signal
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    stopped_at = checkpoint.read_state(out / "latest.npz")["iter_num"]
    assert 0 < stopped_at < 1500 and f"stopped at iteration {stopped_at}" in stdout
    assert stdout.count("stopped at iteration") == 1  # rank 0 alone prints

    resumed = launch(2, TRAIN, "--resume", "--out_dir", out)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {out / 'latest.npz'} at iteration {stopped_at}" in resumed.stdout
    assert "note:" not in resumed.stdout
    a, b = weights(tmp_path / "straight" / "latest.npz"), weights(out / "latest.npz")
    assert all(numpy.array_equal(a[k], b[k]) for k in a)  # bit for bit
    assert resumed.stdout.split("val loss over the whole validation split")[1].split("\n")[0] == \
        straight.stdout.split("val loss over the whole validation split")[1].split("\n")[0]
    assert checkpoint.read_state(out / "latest.npz")["ranks"] == 2
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["iter", "0", "500", "1000", "1500"]


def test_a_checkpoint_of_two_ranks_resumes_in_one_process_with_a_note(tmp_path):
    out = tmp_path / "run"
    first = launch(2, TRAIN, *TINY, "--max_iters", "10", "--lr_decay_iters", "20", "--eval_interval", "10",
                   "--out_dir", out)
    assert first.returncode == 0, first.stderr
    env = clean_env()
    r = subprocess.run([sys.executable, str(TRAIN), "--resume", "--out_dir", str(out), "--max_iters", "20"],
                       capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "2 rank(s), this one has 1" in notes[0]
    assert checkpoint.read_state(out / "latest.npz")["iter_num"] == 20


# ----------------------------------------------------------------------------- clear errors, no hangs
def test_a_batch_that_does_not_split_over_the_ranks_is_one_error_line():
    r = launch(2, TRAIN, "--batch_size", "5")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: --batch_size 5 is the global batch and must split evenly over the 2 ranks "
        "(each trains on batch_size / 2 rows)"]


def test_ranks_with_different_parameters_are_one_error_line(tmp_path):
    r = launch(2, WORKER, "mismatch", tmp_path / "run")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the ranks start from different parameters (rank 0:")


def test_a_rank_that_dies_ends_the_run_with_an_error(tmp_path):
    started = time.time()
    r = launch(2, WORKER, "train-die", tmp_path / "run")
    assert r.returncode != 0 and time.time() - started < TIMEOUT
    assert "BAD TERMINATION" in r.stdout + r.stderr and "signal 9" in r.stdout + r.stderr


def test_a_rank_that_fails_stops_every_rank_with_its_error(tmp_path):
    r = launch(2, WORKER, "train-raise", tmp_path / "run")
    assert r.returncode == 2
    assert "error: rank 1 failed on purpose (on rank 1 of 2: stopping every rank)" in r.stderr


def test_a_bug_in_one_rank_stops_every_rank_with_its_traceback(tmp_path):
    started = time.time()
    r = launch(2, WORKER, "train-bug", tmp_path / "run")
    assert r.returncode != 0 and time.time() - started < TIMEOUT
    assert "TypeError: a bug on rank 1" in r.stderr


def test_a_nan_loss_is_one_error_line_on_every_rank(tmp_path):
    r = launch(2, WORKER, "train-nan", tmp_path / "run")
    assert r.returncode == 2
    # a warning the run gave before (no matplotlib, so no loss.png) is a line of its own
    assert [line for line in r.stderr.strip().splitlines() if not line.startswith("warning: ")] == [
        f"error: the loss became nan at iteration 2; stopping. The last good checkpoints are kept in {tmp_path / 'run'}"]


@pytest.mark.parametrize("flags, message", [
    (["--block_size", "200000"], "error: the text is too short for block_size 200000"),
    (["--data", "no-such-file.txt"], "error: "),
])
def test_an_error_every_rank_meets_in_the_set_up_is_one_line(tmp_path, flags, message):
    r = launch(2, TRAIN, "--n_layer", "1", "--n_embd", "16", "--n_head", "2", *flags, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr


def test_under_mpiexec_rank_0_holds_the_folder(tmp_path):
    from minigpt import files

    out = tmp_path / "run"
    held = files.hold_folder(out)  # another run holds it
    r = launch(2, TRAIN, *TINY, "--max_iters", "2", "--eval_interval", "2", "--out_dir", out)
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and f"in use by another run (pid {os.getpid()})" in lines[0], r.stderr
    held.close()
    r = launch(2, TRAIN, *TINY, "--max_iters", "2", "--eval_interval", "2", "--out_dir", out)
    assert r.returncode == 0, r.stderr
    files.hold_folder(out).close()  # and the 2-rank run gave it back when it ended
