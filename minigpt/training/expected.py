"""Is my loss right? The val loss a correct run of each preset shows, and a run held against it.

minigpt/assets/expected_curves.json (written by benchmarks/expected_curves.py) holds, for the CPU
recipe and nanoGPT's (``--preset nanogpt``), the val loss at every evaluation over several seeds:
mean, spread and a band, mean ± max(3 sd, a floor), that every seed falls inside. On a CPU a run
with a preset's settings on the packaged Tiny Shakespeare lands inside it, whatever its seed; a
mistake in an op (a wrong backward) shows as an evaluation outside it. On a GPU, sums run in
another order, so runs match the CPU's to float tolerance only: still inside the band.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from pathlib import Path
from typing import Any

from minigpt.training.config import TrainConfig

CURVES = Path(__file__).resolve().parents[1] / "assets" / "expected_curves.json"
# settings that change neither the model nor its training: a run with other values of these is
# still a run of its preset (--reference computes the same math, rounding apart)
NOT_THE_RECIPE = ("device", "data", "out_dir", "resume", "seed", "log_interval", "sample_chars", "reference")
NAMES = {"default": "the CPU recipe", "nanogpt": "nanoGPT's CPU recipe (--preset nanogpt)"}


def recipe_of(cfg: TrainConfig) -> dict[str, Any]:
    """The settings of ``cfg`` that make its run what it is (all but NOT_THE_RECIPE)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_THE_RECIPE}


def preset_settings(preset: str) -> dict[str, Any]:
    """The settings that make a run one of ``preset`` ("default" or "nanogpt"), as TrainConfig's fields."""
    return recipe_of(TrainConfig.preset(preset=None if preset == "default" else preset))


@functools.lru_cache(maxsize=1)
def curves() -> dict[str, Any]:
    """The expected curves of every preset (the file, read once; none where it is missing or damaged)."""
    try:
        return json.loads(CURVES.read_text())["presets"]
    except (OSError, ValueError, KeyError):
        return {}


def preset_of(cfg: TrainConfig) -> str | None:
    """The preset whose expected curve ``cfg``'s run should follow, or None: other settings, or
    another text than the packaged Tiny Shakespeare."""
    if cfg.data is not None or os.environ.get("MINIGPT_DATA"):
        return None
    settings = recipe_of(cfg)
    for name, curve in curves().items():
        if settings == curve["settings"]:
            return name
    return None


def judge(preset: str, it: int, val_loss: float) -> str | None:
    """"inside" / "outside" the band of ``preset`` at evaluation ``it`` with a short account, or None
    when the curve has no evaluation at ``it``."""
    for point in curves()[preset]["evals"]:
        if point["iter"] == it:
            low, high = point["mean"] - point["half_width"], point["mean"] + point["half_width"]
            where = "inside" if low <= val_loss <= high else "outside"
            return f"{where} the expected {point['mean']:.3f} ± {point['half_width']:.3f}"
    return None


def first_outside(rows: list[dict[str, Any]], preset: str) -> str | None:
    """The first evaluation of metrics.csv's ``rows`` outside ``preset``'s band, in words; None when
    every one is inside."""
    for row in rows:
        verdict = judge(preset, int(row["iter"]), float(row["val_loss"]))
        if verdict and verdict.startswith("outside"):
            return (f"iteration {int(row['iter'])}: val loss {float(row['val_loss']):.4f} is {verdict} for "
                    f"{NAMES[preset]}")
    return None
