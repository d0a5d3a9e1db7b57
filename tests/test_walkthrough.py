"""The walkthrough runs as written, and the pictures' data is what it claims."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import nn
from minigpt import functional as F
from minigpt.training.metrics import plot_metrics

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
    r = walkthrough.train_model(step, shakespeare_path, max_iters=150)
    # the bigram's N(0, 1) table moves slowly at lr 1e-3 (4.67 -> 4.55) and the deep stack without
    # residual connections learns slowly (4.19 -> 3.35); every other model falls by more than 1 (to
    # about 2.6-3.2) in 150 steps
    assert r.val_loss < r.init_loss - {"bigram": 0.1, "deep": 0.5}.get(step, 1.0)
    assert r.sample.startswith("\n") and len(r.sample) == 121 and r.first_move > 0


def params(step):
    return walkthrough.build(step, 65).num_params()


def test_each_step_adds_exactly_the_parameters_of_the_one_thing_it_changes():
    V, C, T, L = 65, walkthrough.N_EMBD, walkthrough.BLOCK_SIZE, walkthrough.N_LAYER
    linear = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    attention = 3 * linear(C, C, bias=False) + linear(C, C)  # q, k, v of every head, then the projection
    ffwd = linear(C, 4 * C) + linear(4 * C, C)
    assert params("bigram") == V * V
    assert params("embed") == V * C + linear(C, V)
    assert params("position") - params("embed") == T * C
    assert params("head") - params("position") == 3 * linear(C, C, bias=False)
    assert params("multihead") - params("head") == linear(C, C)
    assert params("ffwd") - params("multihead") == ffwd
    assert params("deep") - params("ffwd") == (L - 1) * (attention + ffwd)
    assert params("residual") == params("deep")
    assert params("layernorm") - params("residual") == (2 * L + 1) * 2 * C
    assert params("gpt2_init") == params("layernorm")
    assert params("tied") - params("gpt2_init") == -(V * C + V)  # the head's own weight and bias are gone
    assert params("gpt") - params("tied") == L * 3 * C  # c_attn's biases for q, k and v


def test_deep_and_residual_differ_only_in_the_wiring():
    deep, residual = walkthrough.build("deep", 65), walkthrough.build("residual", 65)
    a, b = deep.state_dict(), residual.state_dict()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)  # same weights
    idx = np.random.default_rng(0).integers(0, 65, (2, 8))
    assert not np.allclose(deep(idx)[0].data, residual(idx)[0].data)  # another function of them


def test_gpt2_init_sets_the_scales_it_names():
    m = walkthrough.build("gpt2_init", 65)
    sd = m.state_dict()
    proj = np.concatenate([v.ravel() for k, v in sd.items() if k.endswith("proj.weight")])
    other = np.concatenate([v.ravel() for k, v in sd.items() if k.endswith("weight") and "ln" not in k
                            and not k.endswith("proj.weight")])
    assert abs(other.std() - 0.02) < 0.001 and abs(proj.std() - 0.02 / np.sqrt(8)) < 0.0005
    assert all((v == 0).all() for k, v in sd.items() if k.endswith("bias"))
    assert all((v == 1).all() for k, v in sd.items() if "ln" in k and k.endswith("weight"))


def test_the_gpt_step_is_the_tied_step_with_qkv_packed_into_c_attn():
    """Load the tied walkthrough model's weights into minigpt.nn.GPT (c_attn's bias 0): the same logits."""
    tied, gpt = walkthrough.build("tied", 65), walkthrough.build("gpt", 65)
    assert tied.lm_head.weight is tied.token_embedding_table.weight and tied.lm_head.bias is None
    sd = {"transformer.wte.weight": tied.token_embedding_table.weight.data,
          "transformer.wpe.weight": tied.position_embedding_table.weight.data,
          "transformer.ln_f.weight": tied.ln_f.weight.data, "transformer.ln_f.bias": tied.ln_f.bias.data,
          "lm_head.weight": tied.lm_head.weight.data}
    for i, block in enumerate(tied.blocks):
        heads = block.sa.heads
        h = f"transformer.h.{i}."
        sd[h + "attn.c_attn.weight"] = np.concatenate([np.concatenate([getattr(head, part).weight.data for head in heads])
                                                       for part in ("query", "key", "value")])  # (3C, C)
        sd[h + "attn.c_attn.bias"] = np.zeros(3 * walkthrough.N_EMBD, np.float32)
        for mine, theirs in (("sa.proj", "attn.c_proj"), ("ffwd.fc", "mlp.c_fc"), ("ffwd.proj", "mlp.c_proj"),
                             ("ln1", "ln_1"), ("ln2", "ln_2")):
            layer = block.sa.proj if mine == "sa.proj" else getattr(block.ffwd, mine[5:]) if mine.startswith("ffwd") \
                else getattr(block, mine)
            sd[h + theirs + ".weight"], sd[h + theirs + ".bias"] = layer.weight.data, layer.bias.data
    gpt.load_state_dict(sd)
    idx = np.random.default_rng(0).integers(0, 65, (2, walkthrough.BLOCK_SIZE))
    np.testing.assert_allclose(gpt(idx)[0].data, tied(idx)[0].data, rtol=1e-4, atol=1e-5)


def test_the_walkthrough_table_lists_every_step_in_order():
    doc = (REPO / "docs" / "walkthrough.md").read_text()
    rows = [line.split("|")[1].strip().strip("`") for line in doc.splitlines() if line.startswith("| `")]
    assert rows[:len(walkthrough.MODEL_STEPS)] == walkthrough.MODEL_STEPS


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
