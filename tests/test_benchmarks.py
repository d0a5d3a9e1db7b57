"""The benchmark scripts still run (smallest settings; PyTorch only where installed). Timings are never asserted:
speed is measured by running the benchmarks themselves, on a quiet machine."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("script, args, expect", [
    ("bench_train.py", ["--rounds", "1", "--steps", "2", "--warmup", "1", "--no-torch", "--no-memory", "--reference"],
     "ratio reference / minigpt"),
    ("bench_train.py", ["--rounds", "1", "--steps", "2", "--warmup", "1", "--no-torch", "--ranks", "2",
                        "--ranks-plain"], "ratio 2 ranks / 2 ranks, plain all-reduce"),
    ("profile_step.py", ["--steps", "2", "--warmup", "1"], "page faults per step"),
    ("profile_step.py", ["--steps", "2", "--warmup", "1", "--reference"], "LayerNorm.backward"),
    ("bench_overlap.py", ["--steps", "2"], "the all-reduce adds"),
    ("bench_fast_ops.py", ["--rounds", "1", "--repeats", "1"], "sorted rows, np.add.reduceat"),
    ("bench_gemm_floor.py", ["--rounds", "1", "--repeats", "1", "--no-torch"], "ms per step"),
    ("bench_gemm_floor.py", ["--rounds", "1", "--repeats", "1", "--no-torch", "--ranks", "2"], "ranks' share"),
    ("bench_generate.py", ["--new_tokens", "12", "--n_layer", "1", "--n_embd", "16", "--n_head", "2",
                           "--block_size", "8"], "identical tokens: True"),
    ("bench_tokenizer.py", ["--rounds", "1", "--vocab_size", "300"], "encode: minigpt"),
    ("bench_gpt2.py", ["--tiny", "--rounds", "1", "--folder", "{tmp}/tiny-gpt2"], "generate (batch 1"),
    ("finetune_evidence.py", ["--steps", "3", "--pretrain_steps", "3"], "fine-tuned 3 steps"),
])
def test_benchmark_scripts_run(script, args, expect, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=str(BENCH.parent)))
    assert r.returncode == 0, r.stderr
    assert expect in r.stdout


def test_the_op_table_runs_where_pytorch_is_installed():
    pytest.importorskip("torch", reason="bench_op_table.py compares with PyTorch (the bench extra)")
    r = subprocess.run([sys.executable, str(BENCH / "bench_op_table.py"), "--recipe", "default", "--rounds", "1",
                        "--repeats", "1", "--steps", "1", "--cold", "1"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(BENCH.parent)))
    assert r.returncode == 0, r.stderr
    assert "caches warm:" in r.stdout and "1 MiB read before each timed call:" in r.stdout
    rows = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    classes = [row.split("|")[1].strip() for row in rows[1:]]
    assert classes[:3] == ["linear", "causal self-attention", "layer norm"] and classes[-1] == "whole step"
    assert "AdamW + clip" in classes and "GELU" in classes


@pytest.mark.parametrize("recipe", ["nanogpt", "default"])
def test_the_op_tables_calls_per_step_are_those_of_a_real_step(recipe, monkeypatch):
    """bench_op_table.py times each op class as many times as fast.GPT's forward makes it: counted
    here by recording every op the model's forward applies."""
    pytest.importorskip("torch", reason="bench_op_table.py builds PyTorch's side of each call")
    sys.path.insert(0, str(BENCH))
    try:
        import bench_op_table
    finally:
        sys.path.remove(str(BENCH))
    import numpy as np

    from minigpt import fast
    from minigpt.tensor import Function

    cfg, mcfg = bench_op_table.recipe(recipe)
    made = []
    apply = Function.apply.__func__
    monkeypatch.setattr(Function, "apply", classmethod(lambda cls, *a, **k: (made.append(cls.__name__), apply(cls, *a, **k))[1]))
    model = fast.GPT(mcfg)
    idx = np.zeros((cfg.batch_size, cfg.block_size), dtype=np.int64)
    model(idx, idx)
    counts = {name: sum(call.per_step for call in calls)
              for name, calls in bench_op_table.op_classes(cfg, mcfg, np.random.default_rng(0)).items()}
    of = {"Linear": "linear", "CausalSelfAttentionQKV": "causal self-attention", "LayerNorm": "layer norm",
          "GELU": "GELU", "ResidualAdd": "residual add", "Embedding": "embedding + positions",
          "CrossEntropy": "cross-entropy"}
    for op, name in of.items():
        assert made.count(op) == counts[name], (op, made.count(op), counts[name])
    assert set(made) - set(of) <= {"GetItem", "Add"}  # the position rows and their add: in "embedding + positions"
