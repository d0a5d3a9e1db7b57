"""Time one full training step (forward, backward, clip, AdamW) of nanoGPT's CPU recipe (--preset nanogpt), against PyTorch.

    python benchmarks/bench_train.py                 # nanoGPT's CPU recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12
    python benchmarks/bench_train.py --rounds 9 --steps 20
    python benchmarks/bench_train.py --reference     # also the plain reference (nn.GPT, optim.AdamW)
    python benchmarks/bench_train.py --ranks 2       # also data parallel: mpiexec -n 2, one BLAS thread per rank

Reports, as medians over many steps after warm-up: ms/iter, tokens/s, and the share of the
machine's float32 matrix-multiply speed the step reaches (6·params·tokens FLOPs against a GEMM
timed in the same run). Where PyTorch is installed (pip install -e ".[bench]") it runs the same
model, batch and optimizer in PyTorch eager, alternating with minigpt round by round so both see
the same machine load, and prints the ratio minigpt / PyTorch. Peak memory of each is measured
in a subprocess of its own (peak RSS, and its growth over the set-up).
minigpt's step asks malloc to keep freed memory for reuse, as ``minigpt.train`` does
(``fast.keep_freed_memory``); that setting is process-wide, so in the timing process PyTorch
gets the same benefit, which makes the ratio a conservative one.
With ``--ranks N`` each round also runs the same global batches data-parallel under
``mpiexec -n N`` (minigpt.distributed: each rank takes B/N rows, one all-reduce per step), timed
on rank 0 after warm-up, between the in-process rounds (pip install -e ".[mpi]").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import minigpt  # noqa: E402
from minigpt import distributed, fast, optim  # noqa: E402
from minigpt.nn import GPT, GPTConfig  # noqa: E402
from minigpt.train import build_optimizer  # noqa: E402
from minigpt.training.config import TrainConfig  # noqa: E402
from minigpt.training.steps import data_parallel_step, parallel_train_step  # noqa: E402


def have_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def make_batches(cfg: TrainConfig, n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, 100_000, (n, cfg.batch_size))
    text = rng.integers(0, 65, 100_000 + cfg.block_size + 1)
    out = []
    for s in starts:
        offs = s[:, None] + np.arange(cfg.block_size)
        out.append((text[offs], text[offs + 1]))
    return out


class MinigptStep:
    name = "minigpt"

    def __init__(self, cfg: TrainConfig, model_cfg: GPTConfig, reference: bool = False):
        # as minigpt.train does; process-wide, so PyTorch's steps in this process gain from it too
        fast.keep_freed_memory()
        minigpt.manual_seed(0)
        self.model = GPT(model_cfg) if reference else fast.GPT(model_cfg)  # as minigpt.train.build_model
        self.opt = build_optimizer(self.model, dataclasses.replace(cfg, reference=reference))
        self.cfg = cfg
        if reference:
            self.name = "reference"  # the plain reference: nn.GPT and optim.AdamW

    def __call__(self, x, y) -> float:
        _, loss = self.model(x, y)
        self.opt.zero_grad()
        loss.backward()
        optim.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return loss.item()


class ParallelStep(MinigptStep):
    """MinigptStep on this rank's share of each global batch (run under mpiexec, one per rank): the
    step a training run takes (training.steps.data_parallel_step: on one machine, fast.SharedMemoryStep),
    or with ``plain`` the plain all-reduce of every gradient (training.steps.parallel_train_step)."""

    def __init__(self, cfg: TrainConfig, model_cfg: GPTConfig, world: distributed.World, plain: bool = False):
        super().__init__(cfg, model_cfg)
        self.world = world
        self.name = f"{world.size} ranks" + (", plain all-reduce" if plain else "")
        if plain:
            self.step = lambda x, y, clip, stop: parallel_train_step(self.model, self.opt, x, y, clip, world, stop)
        else:
            self.step, _ = data_parallel_step(self.model, self.opt, world)

    def __call__(self, x, y) -> float:
        return self.step(x, y, self.cfg.grad_clip, lambda: False)[0]


def ranks_child(steps: int, warmup: int, start: int, plain: bool) -> None:
    """Run on every rank under mpiexec: time ``steps`` data-parallel steps (and as many of the
    plain all-reduce's, with ``plain``); rank 0 prints them."""
    world = distributed.world()
    cfg, mcfg = configs()
    batches = make_batches(cfg, 64)
    kinds = [ParallelStep(cfg, mcfg, world)] + ([ParallelStep(cfg, mcfg, world, plain=True)] if plain else [])
    if (start // max(steps, 1)) % 2:  # odd rounds time the plain step first: no order bias between the two
        kinds.reverse()
    times = {}
    for step in kinds:
        time_steps(step, batches, warmup, 0)
        world.sum(0.0)  # every rank starts timing together
        times[step.name] = time_steps(step, batches, steps, start)
    if world.rank == 0:
        print(json.dumps({"times": times, "blas_threads": distributed.blas_threads}))


def run_mpiexec(args: list[str], timeout: float = 900.0) -> str:
    """``mpiexec ARGS`` (the one installed beside this Python, else the one on PATH); returns its
    output. It runs in a process group of its own, so that a run past ``timeout`` seconds is
    killed with all of its ranks; a failure shows the ranks' error output."""
    beside = Path(sys.executable).parent / "mpiexec"
    proc = subprocess.Popen([str(beside if beside.exists() else "mpiexec"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise SystemExit(f"mpiexec ran past {timeout:.0f} s and was killed, with its ranks") from None
    if proc.returncode != 0:
        raise SystemExit(f"mpiexec failed (exit status {proc.returncode}):\n{err}")
    return out


def time_ranks(ranks: int, steps: int, warmup: int, start: int, plain: bool) -> dict[str, list[float]]:
    out = run_mpiexec(["-n", str(ranks), sys.executable, __file__, "--ranks-child", "--steps", str(steps),
                       "--warmup", str(warmup), "--start", str(start)] + (["--ranks-plain"] if plain else []))
    return json.loads(out.strip().splitlines()[-1])["times"]


class TorchStep:
    name = "pytorch"

    def __init__(self, cfg: TrainConfig, model_cfg: GPTConfig, threads: int):
        import torch

        from torch_gpt import TorchGPT, adamw_like_nanogpt

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        self.torch = torch
        self.model = TorchGPT(model_cfg)
        self.opt = adamw_like_nanogpt(self.model, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay)
        self.cfg = cfg

    def __call__(self, x, y) -> float:
        torch = self.torch
        _, loss = self.model(torch.from_numpy(x), torch.from_numpy(y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return loss.item()


def gemm_gflops(n: int = 1024, repeats: int = 7) -> float:
    """float32 GEMM speed of this machine through NumPy's BLAS (median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def time_steps(step, batches, n: int, start: int) -> list[float]:
    times = []
    for i in range(n):
        x, y = batches[(start + i) % len(batches)]
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
    return times


def rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (VmHWM: unlike ru_maxrss, it
    starts afresh at exec instead of inheriting the parent's peak)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(which: str, steps: int, threads: int) -> None:
    """Run in a subprocess: build one framework's model, train ``steps`` steps, print peak RSS."""
    cfg, mcfg = configs()
    batches = make_batches(cfg, steps)
    step = MinigptStep(cfg, mcfg) if which == "minigpt" else TorchStep(cfg, mcfg, threads)
    base = rss_mb()
    time_steps(step, batches, steps, 0)
    print(json.dumps({"peak_mb": rss_mb(), "growth_mb": rss_mb() - base}))


def measure_memory(which: str, steps: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", which, "--steps", str(steps),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def configs() -> tuple[TrainConfig, GPTConfig]:
    cfg = TrainConfig.preset(preset="nanogpt")  # nanoGPT's CPU recipe: the shape PyTorch is compared on
    mcfg = GPTConfig(block_size=cfg.block_size, vocab_size=65, n_layer=cfg.n_layer, n_head=cfg.n_head,
                     n_embd=cfg.n_embd, dropout=cfg.dropout, bias=cfg.bias)
    return cfg, mcfg


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {np.__version__}, "
            f"load average {load:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds (minigpt, then pytorch)")
    p.add_argument("--steps", type=int, default=15, help="timed steps per framework per round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch intra-op threads")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--reference", action="store_true", help="also time the plain reference (nn.GPT, optim.AdamW)")
    p.add_argument("--ranks", type=int, default=1, help="also time data parallelism over this many MPI ranks")
    p.add_argument("--ranks-plain", action="store_true",
                   help="with --ranks, also time the plain all-reduce step (without fast.SharedMemoryStep)")
    p.add_argument("--memory-child", choices=["minigpt", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--ranks-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.steps, args.threads)
        return
    if args.ranks_child:
        ranks_child(args.steps, args.warmup, args.start, args.ranks_plain)
        return

    cfg, mcfg = configs()
    tokens = cfg.batch_size * cfg.block_size
    batches = make_batches(cfg, 64)
    steps = [MinigptStep(cfg, mcfg)]
    if args.reference:
        steps.append(MinigptStep(cfg, mcfg, reference=True))
    if not args.no_torch and have_torch():
        steps.append(TorchStep(cfg, mcfg, args.threads))
    n_params = steps[0].model.num_params()
    print(f"machine: {machine()}")
    print(f"model: nanoGPT's CPU recipe, {n_params:,} parameters, batch {cfg.batch_size} x block {cfg.block_size} "
          f"= {tokens} tokens/step")
    for s in steps:
        time_steps(s, batches, args.warmup, 0)
    times: dict[str, list[float]] = {s.name: [] for s in steps}
    parallel = f"{args.ranks} ranks"
    for r in range(args.rounds):
        for s in steps:  # alternate, so both see the same machine load
            times[s.name] += time_steps(s, batches, args.steps, r * args.steps)
        if args.ranks > 1:
            for name, t in time_ranks(args.ranks, args.steps, args.warmup, r * args.steps, args.ranks_plain).items():
                times.setdefault(name, []).extend(t)
    gflops = gemm_gflops()
    flops = 6 * n_params * tokens
    print(f"float32 GEMM (1024³, NumPy BLAS): {gflops:.1f} GFLOP/s; a step is 6·params·tokens = "
          f"{flops / 1e9:.2f} GFLOP, so the GEMM floor is {flops / gflops / 1e6:.1f} ms/iter")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        q1, _, q3 = statistics.quantiles(times[name], n=4)
        print(f"{name:8s}: {t * 1e3:7.2f} ms/iter (IQR {q1 * 1e3:.1f}-{q3 * 1e3:.1f}), {tokens / t:9,.0f} tokens/s, "
              f"{flops / t / 1e9 / gflops:5.1%} of GEMM speed  [{len(times[name])} steps]")
    if "pytorch" in med:
        print(f"ratio minigpt / pytorch: {med['minigpt'] / med['pytorch']:.3f} (median step time)")
    for name in (n for n in med if n.startswith(parallel)):
        print(f"ratio {name} / minigpt (one process): {med[name] / med['minigpt']:.3f} (median step time)")
        if "pytorch" in med:
            print(f"ratio {name} / pytorch: {med[name] / med['pytorch']:.3f} (median step time)")
    plain = f"{parallel}, plain all-reduce"
    if plain in med:
        print(f"ratio {parallel} / {plain}: {med[parallel] / med[plain]:.3f} (median step time)")
    if "reference" in med:
        print(f"ratio reference / minigpt (fast): {med['reference'] / med['minigpt']:.3f} (median step time)")
    if not args.no_memory:
        for name in (n for n in med if n in ("minigpt", "pytorch")):  # one process each
            m = measure_memory(name, 20, args.threads)
            print(f"peak memory {name:8s}: {m['peak_mb']:.0f} MB RSS, of which {m['growth_mb']:.0f} MB "
                  f"grew during 20 training steps")


if __name__ == "__main__":
    main()
