"""Check an exercise, or hold a finished training run against its expected loss curve.

    minigpt check --list                 the exercises, in the lecture's order
    minigpt check linear                 check ./exercises/linear.py
    minigpt check linear --dir my_work   check ./my_work/linear.py
    minigpt check --run out              is the run in out/ inside its preset's expected band?

Exit status: 0 every check passes, 1 a mistake found (the message names it), 2 bad input (no such
exercise, file or run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minigpt import checkpoint
from minigpt.exercises import TRACK, BadInput, check
from minigpt.training import expected
from minigpt.training.config import TrainConfig, saved_settings
from minigpt.training.metrics import read_metrics

EXIT_MISTAKE = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default=argparse.SUPPRESS, help="the exercise to check (see --list)")
    p.add_argument("--dir", default="exercises", help="where the exercise files are")
    p.add_argument("--list", action="store_true", help="name the exercises, in the lecture's order")
    p.add_argument("--run", default=argparse.SUPPRESS, metavar="OUT_DIR",
                   help="hold the finished run in OUT_DIR against its preset's expected loss curve")


def run(args: argparse.Namespace) -> int:
    if args.list:
        for i, (name, exercise) in enumerate(TRACK.items(), 1):
            print(f"{i:2d}. {name:14s} {exercise.title}")
        return 0
    if getattr(args, "run", None):
        return check_run(Path(args.run))
    if getattr(args, "name", None) is None:
        raise ValueError("name an exercise to check (minigpt check --list), or --run OUT_DIR")
    try:
        result = check(args.name, args.dir)
    except BadInput as e:
        raise ValueError(str(e)) from None
    print(f"{args.name}: {result.message}")
    return 0 if result.passed else EXIT_MISTAKE


def check_run(out_dir: Path) -> int:
    """0 when every evaluation of the run in ``out_dir`` is inside its preset's band, 1 naming the first
    that is not; a run with other settings or another text has no expected curve: bad input."""
    state = checkpoint.read_state(out_dir / checkpoint.LATEST)
    saved = saved_settings(state)
    # the run says which curve it follows (decided with its own text); older runs: from their settings
    preset = state["expected_preset"] or None if "expected_preset" in state else (
        expected.preset_of(TrainConfig(**saved)) if saved else None)
    if preset is None or preset not in expected.curves():
        raise ValueError(f"the run in {out_dir} is not one of the presets with an expected curve (the CPU recipe, "
                         f"--preset nanogpt, on the packaged Tiny Shakespeare): nothing to hold it against")
    if not (out_dir / "metrics.csv").is_file():
        raise ValueError(f"no metrics.csv in {out_dir}")
    try:
        rows = read_metrics(out_dir / "metrics.csv")
        last = max(int(r["iter"]) for r in rows) if rows else None
        outside = expected.first_outside(rows, preset)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{out_dir / 'metrics.csv'} is damaged ({type(e).__name__}: {e})") from None
    if last is None:
        raise ValueError(f"{out_dir / 'metrics.csv'} holds no evaluation")
    if last != saved.get("max_iters", last):
        raise ValueError(f"the run in {out_dir} stopped at iteration {last} of {saved['max_iters']}: finish it "
                         f"(minigpt train --resume --out_dir {out_dir}), then check it")
    if outside:
        print(f"outside the expected curve at {outside}")
        return EXIT_MISTAKE
    print(f"inside the expected curve of {expected.NAMES[preset]} at every one of its {len(rows)} evaluations")
    return 0
