"""Regenerate minigpt/assets/expected_curves.json: the val loss a correct run of each preset shows.

    python benchmarks/expected_curves.py                          # 5 seeds x (CPU recipe, nanoGPT's)
    python benchmarks/expected_curves.py --presets default --seeds 1337,1,2
    python benchmarks/expected_curves.py --plant gelu --presets default --seeds 1337 --check

Each preset is trained from every seed (the default seed, 1337, among them) on the packaged Tiny
Shakespeare, one run after another in this process, exactly as `minigpt train [--preset nanogpt]
--seed S` trains it. For every evaluation the file holds the mean and the spread of the seeds' val
loss (metrics.csv's estimate) and a band, mean ± max(3 sd, FLOOR), wide enough that every seed
falls inside; the same for the final whole-split loss. `minigpt train` reports at each evaluation
whether a run is inside its preset's band, and `minigpt check --run OUT_DIR` holds a finished run
against it. Rerun this script when a change moves the numbers (a change of the recipe, of the
ops' rounding).

--plant NAME trains with a planted mistake in an op instead (see PLANTS), and --check holds those
runs against the existing file: a mistake a learner could make should leave the band.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import machine  # noqa: E402

import numpy as np  # noqa: E402

from minigpt import functional as reference  # noqa: E402
from minigpt.fast import functional as fast_functional  # noqa: E402
from minigpt.train import train  # noqa: E402
from minigpt.training import expected  # noqa: E402
from minigpt.training.config import TrainConfig  # noqa: E402
from minigpt.training.metrics import read_metrics  # noqa: E402

FLOOR = 0.02  # nats: the narrowest half-width, since 5 seeds can agree by chance


def _plant_gelu() -> Any:
    """The GELU derivative a learner gets by forgetting the chain rule through tanh: 0.5 (1 + tanh u)."""
    original = fast_functional.GELU.forward

    def forward(self: Any, x: Any, inplace: bool = False) -> Any:
        y = original(self, x, inplace=False)  # x stays whole, for the wrong derivative below
        if self.saved is not None:
            u = reference.GELU_K * (x + reference.GELU_A * x ** 3)
            self.saved = 0.5 * (1.0 + np.tanh(u))
        return y
    return mock.patch.object(fast_functional.GELU, "forward", forward)


PLANTS: dict[str, Callable[[], Any]] = {"gelu": _plant_gelu}


def run(preset: str, seed: int, plant: str | None) -> dict[str, Any]:
    """Train ``preset`` from ``seed`` (with a planted mistake); its metrics.csv rows and whole-split loss."""
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.preset(preset=None if preset == "default" else preset, seed=seed, out_dir=out,
                                 sample_chars=0)
        with PLANTS[plant]() if plant else contextlib.nullcontext():
            result = train(cfg, log=lambda m: None, warn=lambda m: None)
        rows = read_metrics(Path(out) / "metrics.csv")
    return {"seed": seed, "evals": [(int(r["iter"]), float(r["val_loss"])) for r in rows],
            "final": result.full_val_loss}


def band(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "sd": round(sd, 4), "half_width": round(max(3 * sd, FLOOR), 4),
            "min": round(min(values), 4), "max": round(max(values), 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="default,nanogpt", help="comma-separated: default, nanogpt")
    p.add_argument("--seeds", default="1337,1,2,3,4", help="comma-separated seeds (keep the default, 1337)")
    p.add_argument("--plant", choices=sorted(PLANTS), default=None, help="train with this planted mistake")
    p.add_argument("--check", action="store_true", help="hold the runs against the file instead of writing it")
    p.add_argument("--out", type=Path, default=expected.CURVES, help="the file to write")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    curves: dict[str, Any] = {}
    for preset in args.presets.split(","):
        runs = []
        for seed in seeds:
            t0 = time.time()
            runs.append(run(preset, seed, args.plant))
            print(f"{preset} seed {seed}{' (' + args.plant + ' planted)' if args.plant else ''}: "
                  f"val {[round(v, 3) for _, v in runs[-1]['evals']]}, whole-split {runs[-1]['final']:.4f}, "
                  f"{time.time() - t0:.0f} s", flush=True)
        if args.check:
            for r in runs:
                rows = [{"iter": i, "val_loss": v} for i, v in r["evals"]]
                print(f"  seed {r['seed']}: {expected.first_outside(rows, preset) or 'inside the band throughout'}")
            continue
        iters = [i for i, _ in runs[0]["evals"]]
        curves[preset] = {
            "settings": expected.preset_settings(preset),
            "evals": [{"iter": it, **band([r["evals"][k][1] for r in runs])} for k, it in enumerate(iters)],
            "final": band([r["final"] for r in runs]),
            "seeds": seeds,
        }
    if not args.check:
        data = {"made_by": "python benchmarks/expected_curves.py", "machine": machine(),
                "date": time.strftime("%Y-%m-%d"), "floor": FLOOR, "presets": curves}
        args.out.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
