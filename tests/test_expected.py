"""Is my loss right? The expected curves shipped in the package, `minigpt train`'s verdict at each
evaluation, and `minigpt check --run`."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from minigpt import checkpoint, nn
from minigpt.train import train
from minigpt.training import expected
from minigpt.training.config import TrainConfig
from minigpt.training.metrics import write_metrics

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_curves_cover_both_presets_and_every_seed_lies_inside():
    curves = expected.curves()
    assert set(curves) == {"default", "nanogpt"}
    for name, curve in curves.items():
        assert 1337 in curve["seeds"] and len(curve["seeds"]) >= 5
        assert curve["settings"] == expected.preset_settings(name)  # the file matches today's presets
        for point in curve["evals"] + [curve["final"]]:
            low, high = point["mean"] - point["half_width"], point["mean"] + point["half_width"]
            assert low <= point["min"] and point["max"] <= high  # a band every seed falls inside
            assert point["half_width"] >= 3 * point["sd"] - 1e-4
    assert [p["iter"] for p in curves["default"]["evals"]] == [0, 500, 1000, 1500, 2000, 2500, 2800]


def test_which_runs_have_an_expected_curve(monkeypatch):
    monkeypatch.delenv("MINIGPT_DATA", raising=False)
    assert expected.preset_of(TrainConfig()) == "default"
    assert expected.preset_of(TrainConfig.preset(preset="nanogpt", seed=7, out_dir="x", reference=True)) == "nanogpt"
    assert expected.preset_of(TrainConfig.preset(n_layer=2)) is None  # another recipe
    assert expected.preset_of(TrainConfig.preset(data="my_text.txt")) is None  # another text
    monkeypatch.setenv("MINIGPT_DATA", "my_text.txt")
    assert expected.preset_of(TrainConfig()) is None


def test_judging_an_evaluation_against_the_band():
    point = expected.curves()["default"]["evals"][2]
    assert expected.judge("default", point["iter"], point["mean"]).startswith("inside")
    assert expected.judge("default", point["iter"], point["mean"] + 1.01 * point["half_width"]).startswith("outside")
    assert expected.judge("default", 123, 2.0) is None  # no evaluation there
    rows = [{"iter": p["iter"], "val_loss": p["mean"]} for p in expected.curves()["default"]["evals"]]
    assert expected.first_outside(rows, "default") is None
    rows[3]["val_loss"] += 0.5
    assert expected.first_outside(rows, "default").startswith(f"iteration {rows[3]['iter']}: val loss")


TINY = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, batch_size=4, eval_iters=2, sample_chars=0,
            max_iters=4, eval_interval=2)


def test_train_says_at_each_evaluation_whether_the_run_is_inside(tmp_path, monkeypatch):
    cfg = TrainConfig.preset(out_dir=str(tmp_path), **TINY)
    curve = {"default": {"settings": expected.recipe_of(cfg), "evals": [{"iter": 0, "mean": 4.0, "half_width": 0.5},
                                                          {"iter": 2, "mean": 9.0, "half_width": 0.1}]}}
    monkeypatch.setattr(expected, "curves", lambda: curve)
    lines = []
    train(cfg, log=lines.append, warn=lambda m: None)
    steps = [line for line in lines if line.startswith("step ")]
    assert "inside the expected 4.000 ± 0.500 for the CPU recipe" in steps[0]
    assert "outside the expected 9.000 ± 0.100" in steps[1]
    assert "expected" not in steps[2]  # iteration 4: the curve has no point there


def fake_run(out_dir, cfg, losses, **state):
    """A run's files: latest.npz with cfg as its settings (and ``state``), metrics.csv with these val losses."""
    model = nn.BigramLanguageModel(5)
    checkpoint.save(out_dir / checkpoint.LATEST, model, train_config=dataclasses.asdict(cfg), iter_num=2800, **state)
    write_metrics(out_dir / "metrics.csv", [{"iter": it, "train_loss": v, "val_loss": v} for it, v in losses])


def check_run(out_dir, **env):
    base = {k: v for k, v in dict(os.environ, PYTHONPATH=str(REPO)).items() if k != "MINIGPT_DATA"}
    return subprocess.run([sys.executable, "-m", "minigpt", "check", "--run", str(out_dir)], capture_output=True,
                          text=True, env=dict(base, **env), timeout=120)


def test_check_run_takes_the_curve_the_run_itself_recorded(tmp_path):
    points = expected.curves()["default"]["evals"]
    means = [(p["iter"], p["mean"]) for p in points]
    fake_run(tmp_path / "a", TrainConfig(), means, expected_preset="default")
    assert check_run(tmp_path / "a", MINIGPT_DATA="other.txt").returncode == 0  # the check's own env is not the run's
    fake_run(tmp_path / "b", TrainConfig(), means, expected_preset="")  # trained on another text
    r = check_run(tmp_path / "b")
    assert r.returncode == 2 and "not one of the presets" in r.stderr


def test_check_run_of_an_unfinished_or_damaged_run_is_bad_input(tmp_path):
    points = expected.curves()["default"]["evals"]
    fake_run(tmp_path / "a", TrainConfig(), [(p["iter"], p["mean"]) for p in points[:3]], expected_preset="default")
    r = check_run(tmp_path / "a")
    assert r.returncode == 2 and "stopped at iteration 1000 of 2800" in r.stderr
    fake_run(tmp_path / "b", TrainConfig(), [(0, 4.2)], expected_preset="default")
    (tmp_path / "b" / "metrics.csv").write_text("step,loss\n0,4.2\n")
    r = check_run(tmp_path / "b")
    assert r.returncode == 2 and "is damaged" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "b" / "metrics.csv").unlink()
    r = check_run(tmp_path / "b")
    assert r.returncode == 2 and "no metrics.csv" in r.stderr


def test_a_training_run_records_its_curve(tmp_path):
    train(TrainConfig.preset(out_dir=str(tmp_path), **TINY), log=lambda m: None, warn=lambda m: None)
    assert checkpoint.read_state(tmp_path / "latest.npz")["expected_preset"] == ""  # a tiny run: no preset


@pytest.mark.parametrize("shift, status", [(0.0, 0), (0.5, 1)])
def test_check_run_names_the_first_evaluation_outside(tmp_path, shift, status):
    points = expected.curves()["default"]["evals"]
    fake_run(tmp_path, TrainConfig(), [(p["iter"], p["mean"] + (shift if p["iter"] >= 1000 else 0)) for p in points])
    r = check_run(tmp_path)
    assert r.returncode == status, r.stderr
    assert ("iteration 1000: val loss" in r.stdout) == (status == 1)


def test_check_run_of_a_run_without_a_curve_is_bad_input(tmp_path):
    fake_run(tmp_path, TrainConfig.preset(n_layer=3), [(0, 4.2)])
    r = check_run(tmp_path)
    assert r.returncode == 2 and "not one of the presets" in r.stderr
    r = check_run(tmp_path / "nowhere")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


def test_a_missing_curve_file_means_no_verdict(monkeypatch, tmp_path):
    expected.curves.cache_clear()
    try:
        with mock.patch.object(expected, "CURVES", tmp_path / "none.json"):
            assert expected.curves() == {} and expected.preset_of(TrainConfig()) is None
    finally:
        expected.curves.cache_clear()
