"""Time one full training step of the GPU preset on a CUDA GPU, against PyTorch eager on the same GPU.

    python benchmarks/bench_gpu.py [--rounds R --steps S]   # GPU preset: 6 x 384, block 256, batch 64
    python benchmarks/bench_gpu.py --json gpu.json          # the numbers as JSON too

A step is the training loop's ``train_step``: forward, backward, clipping, AdamW, then one read-back
of the loss (PyTorch's: ``loss.item()``), from int64 NumPy batches on the host. Both start from
minigpt's weights (loaded into ``torch_gpt.TorchGPT``), with dropout 0.2 and the same AdamW, in
float32. After ``--warmup`` steps each, they alternate round by round; a round is S steps timed as
a whole, the GPU synchronised at each clock read. Prints the GPU, CuPy and PyTorch versions (and
whether TF32 is on), then medians over the R rounds: ms/iter, tokens/s, and the ratio minigpt /
PyTorch. Without PyTorch (or its CUDA), minigpt is timed alone and the reason is printed; without a
CUDA GPU (no CuPy, or no GPU it can use) it prints one line saying so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import minigpt  # noqa: E402
from bench_train import have_torch, make_batches  # noqa: E402
from minigpt import backend  # noqa: E402
from minigpt.train import build_model, build_optimizer  # noqa: E402
from minigpt.training.config import TrainConfig  # noqa: E402
from minigpt.training.steps import train_step  # noqa: E402

Batch = tuple[np.ndarray, np.ndarray]


def no_gpu_reason() -> str | None:
    """Why minigpt cannot train on a CUDA GPU here, or None when it can."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return "CuPy not installed"
    return None if "cuda" in backend.available_devices() else "CuPy is installed but finds no usable CUDA GPU"


def torch_skip_reason() -> str | None:
    """Why PyTorch cannot run on the GPU here, or None when it can."""
    if not have_torch():
        return 'PyTorch is not installed (pip install -e ".[bench]")'
    import torch

    return None if torch.cuda.is_available() else f"PyTorch {torch.__version__} cannot use CUDA (CPU-only build?)"


class MinigptStep:
    name = "minigpt"

    def __init__(self, cfg: TrainConfig) -> None:
        import cupy

        self.sync: Callable[[], None] = cupy.cuda.Device().synchronize
        minigpt.manual_seed(cfg.seed)
        self.model = build_model(cfg, 65).to("cuda")  # 65: make_batches' vocabulary
        self.opt = build_optimizer(self.model, cfg)
        self.grad_clip = cfg.grad_clip
        self.it = 0

    def __call__(self, x: np.ndarray, y: np.ndarray) -> float:
        backend.start_device_stream(self.it)  # as the training loop does before step it
        self.it += 1
        return train_step(self.model, self.opt, x, y, self.grad_clip)


class TorchStep:
    name = "pytorch"

    def __init__(self, cfg: TrainConfig, model: Any) -> None:
        import torch

        from torch_gpt import adamw_like_nanogpt, from_minigpt

        torch.manual_seed(cfg.seed)  # its dropout masks
        self.torch = torch
        self.sync: Callable[[], None] = torch.cuda.synchronize
        self.model = from_minigpt(model).to("cuda")  # minigpt's weights, before either has trained
        self.opt = adamw_like_nanogpt(self.model, cfg.learning_rate, (cfg.beta1, cfg.beta2), cfg.weight_decay)
        self.grad_clip = cfg.grad_clip

    def __call__(self, x: np.ndarray, y: np.ndarray) -> float:
        torch = self.torch
        _, loss = self.model(torch.from_numpy(x).to("cuda"), torch.from_numpy(y).to("cuda"))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        return loss.item()


def run_steps(step: MinigptStep | TorchStep, batches: list[Batch], n: int, start: int) -> None:
    for i in range(n):
        step(*batches[(start + i) % len(batches)])


def time_round(step: MinigptStep | TorchStep, batches: list[Batch], n: int, start: int) -> float:
    """Seconds per step over ``n`` steps timed as a whole, the GPU idle at both clock reads."""
    step.sync()
    t0 = time.perf_counter()
    run_steps(step, batches, n, start)
    step.sync()
    return (time.perf_counter() - t0) / n


def describe_gpu(torch_ok: bool) -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    line = f"GPU: {name}; CuPy {cupy.__version__} (TF32 {os.environ.get('CUPY_TF32', '0') != '0'})"
    if torch_ok:
        import torch

        line += f", PyTorch {torch.__version__} (TF32 {torch.backends.cuda.matmul.allow_tf32})"
    return line


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (minigpt, then pytorch)")
    p.add_argument("--steps", type=int, default=10, help="steps per framework per round, timed as a whole")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each framework first")
    p.add_argument("--batch_size", type=int, help="override the preset's 64")
    p.add_argument("--block_size", type=int, help="override the preset's 256")
    p.add_argument("--n_layer", type=int, help="override the preset's 6 (a small model: a smoke test)")
    p.add_argument("--n_head", type=int, help="override the preset's 6")
    p.add_argument("--n_embd", type=int, help="override the preset's 384")
    p.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        p.error("--rounds and --steps must be at least 1, --warmup at least 0")
    return args


def measure(steps: list[MinigptStep | TorchStep], batches: list[Batch], args: argparse.Namespace) -> dict:
    """{name: seconds per step of each round}, after the warm-up, frameworks alternating."""
    for s in steps:
        run_steps(s, batches, args.warmup, 0)
    rounds: dict[str, list[float]] = {s.name: [] for s in steps}
    for r in range(args.rounds):
        for s in steps:  # alternate, so both see the same GPU clocks and load
            rounds[s.name].append(time_round(s, batches, args.steps, args.warmup + r * args.steps))
    return rounds


def main() -> None:
    args = parse_args()
    if reason := no_gpu_reason():
        print(f"bench_gpu: no CUDA GPU here ({reason}) - nothing measured")
        return
    cfg = TrainConfig.preset(device="cuda", batch_size=args.batch_size, block_size=args.block_size,
                             n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    tokens = cfg.batch_size * cfg.block_size
    steps: list[MinigptStep | TorchStep] = [MinigptStep(cfg)]
    skipped = torch_skip_reason()
    if skipped is None:
        steps.append(TorchStep(cfg, steps[0].model))
    gpu = describe_gpu(skipped is None)
    print(gpu)
    print(f"model: GPU preset{' (resized)' if args.n_layer or args.n_embd else ''}, {steps[0].model.num_params():,} parameters, batch {cfg.batch_size} x block "
          f"{cfg.block_size} = {tokens} tokens/step, dropout {cfg.dropout}")
    rounds = measure(steps, make_batches(cfg, 64), args)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    for name, t in med.items():
        lo, hi = min(rounds[name]) * 1e3, max(rounds[name]) * 1e3
        print(f"{name:8s}: {t * 1e3:8.2f} ms/iter (rounds {lo:.2f}-{hi:.2f}), {tokens / t:10,.0f} tokens/s  "
              f"[{args.rounds} rounds of {args.steps} steps]")
    ratio = med["minigpt"] / med["pytorch"] if "pytorch" in med else None
    print(f"comparison with PyTorch skipped: {skipped}" if ratio is None
          else f"ratio minigpt / pytorch: {ratio:.3f} (median step time)")
    if args.json:
        args.json.write_text(json.dumps(dict(
            gpu=gpu, batch_size=cfg.batch_size, block_size=cfg.block_size, rounds=args.rounds, steps=args.steps,
            warmup=args.warmup, ms_per_iter={k: v * 1e3 for k, v in med.items()},
            tokens_per_s={k: tokens / v for k, v in med.items()}, ratio_minigpt_over_pytorch=ratio,
            round_ms_per_iter={k: [t * 1e3 for t in v] for k, v in rounds.items()}, pytorch_skipped=skipped),
            indent=2) + "\n")


if __name__ == "__main__":
    main()
