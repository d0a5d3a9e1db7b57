"""Train candidate CPU recipes with the README's command and report each one's whole-val loss
and wall time, beside nanoGPT's own train.py on its CPU recipe (the time budget).

    python benchmarks/sweep_recipe.py --list                         # the candidate recipes
    python benchmarks/sweep_recipe.py --only nanogpt,lr3e-3 --seeds 1337
    python benchmarks/sweep_recipe.py --nanogpt ~/nanoGPT            # also time nanoGPT's train.py first
    python benchmarks/sweep_recipe.py --only nanogpt,default --keep runs/  # keep each run's out_dir
    python benchmarks/sweep_recipe.py --plot runs/nanogpt-1337 runs/default-1337 docs/images/recipe_curves.png

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
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "examples" / "train_shakespeare.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine  # noqa: E402  (the CPU, its cores and the load average)

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
    # round 2, around the best of round 1 (3 layers)
    "3x128-lr6e-3": {"preset": "nanogpt", "n_layer": 3, "learning_rate": 6e-3, "min_lr": 6e-4, "eval_interval": 500,
                     **recipe(1800)},
    "2x128-lr6e-3": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 6e-3, "min_lr": 6e-4, "eval_interval": 500,
                     **recipe(2500)},
    "3x128-b16-lr6e-3": {"preset": "nanogpt", "n_layer": 3, "batch_size": 16, "learning_rate": 6e-3, "min_lr": 6e-4,
                         "eval_interval": 500, **recipe(1450)},
    "3x128-b24-lr8e-3": {"preset": "nanogpt", "n_layer": 3, "batch_size": 24, "learning_rate": 8e-3, "min_lr": 8e-4,
                         "eval_interval": 500, **recipe(1050)},
    "2x192-lr4e-3": {"preset": "nanogpt", "n_layer": 2, "n_head": 6, "n_embd": 192, "learning_rate": 4e-3,
                     "min_lr": 4e-4, "eval_interval": 500, **recipe(1700)},
    "3x128-lr6e-3-block32-b24": {"preset": "nanogpt", "n_layer": 3, "block_size": 32, "batch_size": 24,
                                 "learning_rate": 6e-3, "min_lr": 6e-4, "eval_interval": 500, **recipe(1800)},
    # round 3, around the best of round 2 (2 layers)
    "2x128-lr4e-3": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 4e-3, "min_lr": 4e-4, "eval_interval": 500,
                     **recipe(2500)},
    "2x128-lr8e-3": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 8e-3, "min_lr": 8e-4, "eval_interval": 500,
                     **recipe(2500)},
    "2x128-b16-lr6e-3": {"preset": "nanogpt", "n_layer": 2, "batch_size": 16, "learning_rate": 6e-3, "min_lr": 6e-4,
                         "eval_interval": 500, **recipe(2000)},
    "2x128-lr6e-3-beta2-0.95": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 6e-3, "min_lr": 6e-4,
                                "beta2": 0.95, "eval_interval": 500, **recipe(2500)},
    "2x128-lr6e-3-wd0.05": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 6e-3, "min_lr": 6e-4,
                            "weight_decay": 0.05, "eval_interval": 500, **recipe(2500)},
    "1x128-lr6e-3": {"preset": "nanogpt", "n_layer": 1, "learning_rate": 6e-3, "min_lr": 6e-4, "eval_interval": 500,
                     **recipe(3800)},
    "2x160-lr5e-3": {"preset": "nanogpt", "n_layer": 2, "n_head": 4, "n_embd": 160, "learning_rate": 5e-3,
                     "min_lr": 5e-4, "eval_interval": 500, **recipe(2000)},
    "2x128-lr6e-3-warm50": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 6e-3, "min_lr": 6e-4,
                            "warmup_iters": 50, "eval_interval": 500, **recipe(2500)},
    # round 4: the 2-layer recipe with more of the time budget
    "2x128-lr4e-3-3000": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 4e-3, "min_lr": 4e-4,
                          "eval_interval": 500, **recipe(3000)},
    "2x128-lr5e-3-3000": {"preset": "nanogpt", "n_layer": 2, "learning_rate": 5e-3, "min_lr": 5e-4,
                          "eval_interval": 500, **recipe(3000)},
    # round 5: one layer, the best of round 3, with more of the budget
    "1x128-lr6e-3-5500": {"preset": "nanogpt", "n_layer": 1, "learning_rate": 6e-3, "min_lr": 6e-4,
                          "eval_interval": 500, **recipe(5500)},
    "1x128-lr8e-3-5500": {"preset": "nanogpt", "n_layer": 1, "learning_rate": 8e-3, "min_lr": 8e-4,
                          "eval_interval": 500, **recipe(5500)},
    "1x128-b24-lr6e-3-3200": {"preset": "nanogpt", "n_layer": 1, "batch_size": 24, "learning_rate": 6e-3,
                              "min_lr": 6e-4, "eval_interval": 500, **recipe(3200)},
    "1x192-lr5e-3-4000": {"preset": "nanogpt", "n_layer": 1, "n_embd": 192, "learning_rate": 5e-3, "min_lr": 5e-4,
                          "eval_interval": 500, **recipe(4000)},
    "1x128-block128-lr6e-3-3000": {"preset": "nanogpt", "n_layer": 1, "block_size": 128, "learning_rate": 6e-3,
                                   "min_lr": 6e-4, "eval_interval": 500, **recipe(3000)},
    # the winner with a margin on time: 2800 iterations instead of 3200 (the new default)
    "1x128-b24-lr6e-3-2800": {"preset": "nanogpt", "n_layer": 1, "batch_size": 24, "learning_rate": 6e-3,
                              "min_lr": 6e-4, "eval_interval": 500, **recipe(2800)},
    # the floor of the winner's schedule: lr/100 and lr/3 instead of lr/10
    "1x128-b24-lr6e-3-2800-floor6e-5": {"preset": "nanogpt", "n_layer": 1, "batch_size": 24, "learning_rate": 6e-3,
                                        "min_lr": 6e-5, "eval_interval": 500, **recipe(2800)},
    "1x128-b24-lr6e-3-2800-floor2e-3": {"preset": "nanogpt", "n_layer": 1, "batch_size": 24, "learning_rate": 6e-3,
                                        "min_lr": 2e-3, "eval_interval": 500, **recipe(2800)},
    "default": {},
}
FIELDS = ["recipe", "seed", "wall_s", "whole_val", "peak_mb", "flags", "machine", "when"]


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


def run_minigpt(name: str, seed: int, keep: Path | None = None) -> dict[str, object]:
    spec = CANDIDATES[name]
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = str(keep / f"{name}-{seed}") if keep else tmp
        cmd = [sys.executable, str(TRAIN), *flags_of(spec), "--seed", str(seed), "--out_dir", out_dir]
        wall, peak, text = timed(cmd)
    found = re.search(r"val loss over the whole validation split \([\d,]+ tokens\): ([\d.]+)", text)
    return {"recipe": name, "seed": seed, "wall_s": f"{wall:.1f}", "whole_val": found.group(1) if found else "",
            "peak_mb": f"{peak:.0f}", "flags": " ".join(flags_of(spec))}


def run_nanogpt(path: Path) -> dict[str, object]:
    wall, peak, _ = timed([sys.executable, "train.py", *NANOGPT_ARGS], cwd=path)
    return {"recipe": "nanoGPT train.py", "seed": 1337, "wall_s": f"{wall:.1f}", "whole_val": "",
            "peak_mb": f"{peak:.0f}", "flags": " ".join(NANOGPT_ARGS)}


def plot(runs: list[tuple[str, Path]], out: Path) -> None:
    """Val loss (the eval_iters estimate in metrics.csv) against wall time, one curve per run directory."""
    import matplotlib  # noqa: PLC0415 - only for the picture (pip install -e ".[plot]")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for label, run in runs:
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        ax.plot([float(r["elapsed_s"]) for r in rows], [float(r["val_loss"]) for r in rows], "o-", label=label)
    ax.axhline(1.90, color="gray", lw=0.8, ls="--")
    ax.set_xlabel("seconds of training (elapsed_s in metrics.csv)")
    ax.set_ylabel("val loss (mean of eval_iters batches)")
    ax.set_title("Tiny Shakespeare on 2 CPU cores: nanoGPT's recipe and minigpt's")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=None, help="comma-separated recipe names (default: all)")
    p.add_argument("--seeds", default="1337", help="comma-separated seeds")
    p.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout: time its train.py first")
    p.add_argument("--csv", type=Path, default=REPO / "benchmarks" / "results" / "recipe_sweep.csv")
    p.add_argument("--keep", type=Path, default=None, help="keep each run's out_dir (metrics.csv...) under this folder")
    p.add_argument("--list", action="store_true", help="print the candidates and exit")
    p.add_argument("--plot", nargs=3, metavar=("OLD_RUN", "NEW_RUN", "PNG"), type=Path, default=None,
                   help="draw the val loss of two kept runs against wall time into PNG, and exit")
    args = p.parse_args()
    if args.plot:
        old, new_run, png = args.plot
        plot([("nanoGPT's recipe (--preset nanogpt)", old), ("minigpt's CPU recipe (the default)", new_run)], png)
        return
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
            row = run_nanogpt(args.nanogpt) if seed is None else run_minigpt(name, seed, args.keep)
            row.update(machine=machine(), when=time.strftime("%Y-%m-%d %H:%M"))
            writer.writerow(row)
            f.flush()
            print(f"{row['recipe']:22s} seed {row['seed']}: {row['wall_s']:>6s} s, whole-val {row['whole_val'] or '-':>6s}, "
                  f"peak {row['peak_mb']} MB", flush=True)


if __name__ == "__main__":
    main()
