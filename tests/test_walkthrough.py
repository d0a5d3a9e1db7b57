"""The walkthrough runs as written, and the pictures' data is what it claims."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import nn
from minigpt import functional as F
from minigpt.train import plot_metrics

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import walkthrough  # noqa: E402


def run(*args, data):
    env = dict(os.environ, PYTHONPATH=str(REPO), MINIGPT_DATA=data)
    return subprocess.run([sys.executable, str(REPO / "examples" / "walkthrough.py"), *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_data_and_averaging_steps_print_the_notebook_facts(shakespeare_path):
    r = run("data", data=shakespeare_path)
    assert r.returncode == 0, r.stderr
    assert "1,115,394 characters" in r.stdout and "vocabulary: 65 characters" in r.stdout
    assert "[20, 43, 50, 50, 53, 6, 1, 61, 53, 56, 50, 42, 2]" in r.stdout
    assert "1,003,854 training" in r.stdout
    r = run("averaging", data=shakespeare_path)
    assert r.returncode == 0 and "the three ways agree" in r.stdout


@pytest.mark.parametrize("step", walkthrough.MODEL_STEPS)
def test_every_model_step_trains_and_learns(step, shakespeare_path):
    before = walkthrough.train_step(step, shakespeare_path, max_iters=1)
    after = walkthrough.train_step(step, shakespeare_path, max_iters=150)
    # the bigram's N(0, 1) table moves slowly at lr 1e-3 (4.67 -> 4.48); every other model falls
    # by more than 1 (to about 2.5-2.95) in 150 steps
    assert after < before - (0.1 if step == "bigram" else 1.0)


def test_walkthrough_head_is_the_masked_softmax_formula():
    x = np.random.default_rng(0).standard_normal((2, 5, walkthrough.N_EMBD)).astype(np.float32)
    head = walkthrough.Head(16)
    out = head(x).data
    k, q, v = (x @ lin.weight.data.T for lin in (head.key, head.query, head.value))
    att = q @ k.transpose(0, 2, 1) / 4.0
    att = np.where(np.tril(np.ones((5, 5), bool)), att, -np.inf)
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, att @ v, rtol=1e-5, atol=1e-6)


def test_attention_maps_are_causal_distributions_and_match_the_model():
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=8)).eval()
    idx = np.random.default_rng(1).integers(0, 11, (1, 6))
    maps = m.attention_maps(idx)
    assert maps.shape == (2, 1, 2, 6, 6)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    assert (maps[..., np.triu_indices(6, 1)[0], np.triu_indices(6, 1)[1]] == 0).all()
    # layer 0 by hand: the maps times the values give the attention output before c_proj
    block = m.transformer.h[0]
    x = m.transformer.wte(idx) + m.transformer.wpe(np.arange(6))
    qkv = block.attn.c_attn(block.ln_1(x)).data.reshape(1, 6, 3, 2, 4).transpose(2, 0, 3, 1, 4)
    expected = F.scaled_dot_product_attention(*(F.Tensor(a) for a in qkv)).data
    np.testing.assert_allclose(maps[0] @ qkv[2], expected, rtol=1e-5, atol=1e-6)


def test_loss_plot_is_written_when_matplotlib_is_there(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"iter": i, "train_loss": 4 - i / 100, "val_loss": 4.1 - i / 100} for i in (0, 100, 200)]
    assert plot_metrics(rows, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
