"""Train candidate CPU recipes with the README's command and report each one's whole-val loss
and wall time, beside nanoGPT's own train.py on its CPU recipe (the time budget).

    python benchmarks/sweep_recipe.py --list                         # the candidate recipes
    python benchmarks/sweep_recipe.py --only nanogpt,lr3e-3 --seeds 1337
    python benchmarks/sweep_recipe.py --nanogpt ~/nanoGPT            # also time nanoGPT's train.py first

Each run is `python examples/train_shakespeare.py FLAGS --seed S` in a process of its own, timed
from start to exit (so the wall time includes start-up, evaluations, the whole-val loss and the
sample, as a user sees it), with its peak memory (the child's maximum resident set). The runs go
one after another, never side by side: on 2 cores a second process slows the first. Every row is
appended to --csv (default benchmarks/results/recipe_sweep.csv) as soon as it ends.
nanoGPT's train.py needs PyTorch (pip install -e ".[bench]") and its data prepared
(python data/shakespeare_char/prepare.py, with input.txt copied in beside it).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "train_shakespeare.py"

# nanoGPT's CPU recipe as its README gives it, run by nanoGPT's own train.py (the time budget)
NANOGPT_ARGS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]


def recipe(iters: int, **flags: object) -> dict[str, object]:
    return {"max_iters": iters, "lr_decay_iters": iters, **flags}


# name -> the flags that differ from the preset in force (--preset nanogpt pins nanoGPT's recipe)
CANDIDATES: dict[str, dict[str, object]] = {
    "nanogpt": {"preset": "nanogpt"},
    "nanogpt-1300": {"preset": "nanogpt", **recipe(1300)},
    "lr3e-3": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, **recipe(1300)},
    "lr5e-3": {"preset": "nanogpt", "learning_rate": 5e-3, "min_lr": 5e-4, **recipe(1300)},
    "lr3e-3-eval500": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, "eval_interval": 500,
                       **recipe(1400)},
    "b24-lr4e-3": {"preset": "nanogpt", "batch_size": 24, "learning_rate": 4e-3, "min_lr": 4e-4, "eval_interval": 500,
                   **recipe(800)},
    "b24-lr6e-3": {"preset": "nanogpt", "batch_size": 24, "learning_rate": 6e-3, "min_lr": 6e-4, "eval_interval": 500,
                   **recipe(800)},
    "b16-lr4e-3": {"preset": "nanogpt", "batch_size": 16, "learning_rate": 4e-3, "min_lr": 4e-4, "eval_interval": 500,
                   **recipe(1100)},
    "3x128-lr4e-3": {"preset": "nanogpt", "n_layer": 3, "learning_rate": 4e-3, "min_lr": 4e-4, "eval_interval": 500,
                     **recipe(1800)},
    "4x96-lr4e-3": {"preset": "nanogpt", "n_embd": 96, "learning_rate": 4e-3, "min_lr": 4e-4, "eval_interval": 500,
                    **recipe(1800)},
    "block32-b24-lr4e-3": {"preset": "nanogpt", "block_size": 32, "batch_size": 24, "learning_rate": 4e-3,
                           "min_lr": 4e-4, "eval_interval": 500, **recipe(1400)},
    "lr3e-3-warm50": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_iters": 50,
                      "eval_interval": 500, **recipe(1400)},
    "lr3e-3-beta2-0.95": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, "beta2": 0.95,
                          "eval_interval": 500, **recipe(1400)},
    "lr3e-3-wd0": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, "weight_decay": 0.0,
                   "eval_interval": 500, **recipe(1400)},
    "lr3e-3-dropout0.1": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, "dropout": 0.1,
                          "eval_interval": 500, **recipe(1400)},
    "lr3e-3-4000": {"preset": "nanogpt", "learning_rate": 3e-3, "min_lr": 3e-4, **recipe(4000)},
}
FIELDS = ["recipe", "seed", "wall_s", "whole_val", "peak_mb", "flags", "machine", "when"]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def timed(cmd: list[str], cwd: Path | None = None) -> tuple[float, float, str]:
    """Run ``cmd``; (wall seconds, the child's peak RSS in MB, its stdout + stderr)."""
    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{text[-2000:]}")
    return wall, usage.ru_maxrss / 1024, text


def flags_of(spec: dict[str, object]) -> list[str]:
    return [part for k, v in spec.items() for part in (f"--{k}", str(v))]


def run_minigpt(name: str, seed: int) -> dict[str, object]:
    spec = CANDIDATES[name]
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [sys.executable, str(TRAIN), *flags_of(spec), "--seed", str(seed), "--out_dir", out_dir]
        wall, peak, text = timed(cmd)
    found = re.search(r"val loss over the whole validation split \([\d,]+ tokens\): ([\d.]+)", text)
    return {"recipe": name, "seed": seed, "wall_s": f"{wall:.1f}", "whole_val": found.group(1) if found else "",
            "peak_mb": f"{peak:.0f}", "flags": " ".join(flags_of(spec))}


def run_nanogpt(path: Path) -> dict[str, object]:
    wall, peak, _ = timed([sys.executable, "train.py", *NANOGPT_ARGS], cwd=path)
    return {"recipe": "nanoGPT train.py", "seed": 1337, "wall_s": f"{wall:.1f}", "whole_val": "",
            "peak_mb": f"{peak:.0f}", "flags": " ".join(NANOGPT_ARGS)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated recipe names (default: all)")
    p.add_argument("--seeds", default="1337", help="comma-separated seeds")
    p.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout: time its train.py first")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "recipe_sweep.csv")
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    args = p.parse_args()
    if args.list:
        for name, spec in CANDIDATES.items():
            print(f"{name:22s} {' '.join(flags_of(spec))}")
        return
    names = args.only.split(",") if args.only else list(CANDIDATES)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    new = not args.csv.exists()
    with open(args.csv, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        if new:
            writer.writeheader()
        jobs = ([("nanogpt", None)] if args.nanogpt else []) + [(n, s) for n in names for s in seeds]
        for name, seed in jobs:
            row = run_nanogpt(args.nanogpt) if seed is None else run_minigpt(name, seed)
            row.update(machine=machine(), when=time.strftime("%Y-%m-%d %H:%M"))
            writer.writerow(row)
            f.flush()
            print(f"{row['recipe']:22s} seed {row['seed']}: {row['wall_s']:>6s} s, whole-val {row['whole_val'] or '-':>6s}, "
                  f"peak {row['peak_mb']} MB", flush=True)


if __name__ == "__main__":
    main()
