"""Training end to end on the real text: the loss falls, a stopped run resumes bit-identically,
the whole-split loss is what it claims, and the command line works."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minigpt import backend, checkpoint, fast, nn
from minigpt.fast import gpt as fast_gpt
from minigpt.fast import optim as fast_optim
from minigpt.data import CharTokenizer
from minigpt.train import train
from minigpt.training.config import TrainConfig, resolve_device, resume_config
from minigpt.training.evaluate import split_loss
from minigpt.training.metrics import read_metrics

REPO = Path(__file__).resolve().parents[1]


def tiny(tmp_path, data, **kw):
    cfg = dict(data=data, out_dir=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=16, block_size=16,
               batch_size=8, max_iters=40, lr_decay_iters=40, warmup_iters=5, learning_rate=3e-3,
               eval_interval=20, eval_iters=4, sample_chars=30)
    cfg.update(kw)
    return TrainConfig.preset(**cfg)


def quiet(msg):
    pass


def test_short_training_run_on_the_real_text_lowers_the_loss(tmp_path, shakespeare_path):
    result = train(tiny(tmp_path, shakespeare_path), log=quiet)
    rows = read_metrics(result.out_dir / "metrics.csv")
    assert [int(r["iter"]) for r in rows] == [0, 20, 40]
    first, last = float(rows[0]["val_loss"]), float(rows[-1]["val_loss"])
    assert first == pytest.approx(math.log(65), abs=0.15)
    assert last < first - 0.6
    assert result.full_val_loss is not None and abs(result.full_val_loss - last) < 0.15
    assert len(result.sample) == 31
    assert (result.out_dir / "best.npz").exists() and (result.out_dir / "latest.npz").exists()
    ck = checkpoint.load(result.out_dir)
    assert ck.state["iter_num"] == 40 and ck.tokenizer.vocab_size == 65


def test_interrupted_then_resumed_run_is_bit_identical(tmp_path, shakespeare_path):
    kw = dict(dropout=0.1, max_iters=30, lr_decay_iters=30, eval_interval=10)
    straight = train(tiny(tmp_path / "a", shakespeare_path, **kw), log=quiet)

    calls = {"n": 0}

    def stop_at_13():
        calls["n"] += 1
        return calls["n"] == 13

    first = train(tiny(tmp_path / "b", shakespeare_path, **kw), log=quiet, should_stop=stop_at_13)
    assert first.interrupted and first.iterations == 13
    resumed = train(resume_config(tmp_path / "b" / "run"), log=quiet)
    assert not resumed.interrupted and resumed.iterations == 30

    a = checkpoint.load(straight.out_dir / "latest.npz")
    b = checkpoint.load(resumed.out_dir / "latest.npz")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert ka == kb
        np.testing.assert_array_equal(va, vb)
    for i, st in a.optimizer_state["state"].items():
        np.testing.assert_array_equal(st["exp_avg"], b.optimizer_state["state"][i]["exp_avg"])
    assert a.state["rng"] == b.state["rng"] and a.state["batch_rng"] == b.state["batch_rng"]
    strip = lambda rows: [{k: r[k] for k in ("iter", "train_loss", "val_loss", "lr")} for r in rows]  # noqa: E731
    assert strip(read_metrics(straight.out_dir / "metrics.csv")) == strip(read_metrics(resumed.out_dir / "metrics.csv"))
    assert straight.full_val_loss == resumed.full_val_loss
    assert straight.sample == resumed.sample


def test_split_loss_scores_every_token_once():
    # for a bigram model the loss of a token does not depend on its context, so the whole-split
    # loss must equal the mean of -log p(next | current) over all consecutive pairs
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, 103)
    m = nn.BigramLanguageModel(7)
    table = m.token_embedding_table.weight.data.astype(np.float64)
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    expected = -logp[ids[:-1], ids[1:]].mean()
    assert split_loss(m, ids, block_size=10, batch_rows=4) == pytest.approx(expected, rel=1e-5)
    assert split_loss(m, ids, block_size=102) == pytest.approx(expected, rel=1e-5)


def test_split_loss_of_a_gpt_matches_a_direct_computation():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 9, 50)
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=9, n_layer=1, n_head=1, n_embd=8)).eval()
    total, n = 0.0, 0
    for s in range(0, 49, 8):  # consecutive chunks, the last one shorter
        x, y = ids[s:min(s + 8, 49)], ids[s + 1:min(s + 9, 50)]
        logits = m(x[None])[0].data[0].astype(np.float64)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        total -= logp[np.arange(len(y)), y].sum()
        n += len(y)
    assert n == 49
    assert split_loss(m, ids, block_size=8) == pytest.approx(total / n, rel=1e-5)


def test_reference_flag_trains_with_the_reference_ops_to_the_same_loss(tmp_path, monkeypatch):
    lines = []
    fast_run = train(tiny(tmp_path / "fast", None, max_iters=20, sample_chars=0), log=quiet)

    def no_fast_forward(*args, **kwargs):
        raise AssertionError("the fast twin ran under --reference")

    monkeypatch.setattr(fast_gpt, "gpt_forward", no_fast_forward)  # where fast.GPT.forward finds it
    with pytest.raises(AssertionError, match="the fast twin ran"):  # the guard can fire
        fast.GPT(nn.GPTConfig(block_size=4, vocab_size=5, n_layer=1, n_head=1, n_embd=4))(np.zeros((1, 4), int))
    monkeypatch.setattr(fast_optim, "adamw_update", no_fast_forward)
    ref_run = train(tiny(tmp_path / "ref", None, max_iters=20, sample_chars=0, reference=True), log=lines.append)
    assert any("reference ops" in line for line in lines)
    assert ref_run.full_val_loss == pytest.approx(fast_run.full_val_loss, abs=1e-3)  # float32 rounding apart
    assert fast.enabled(np.zeros(1))  # the switch is back on after the run


def test_bigram_training(tmp_path):  # no data named: the packaged Tiny Shakespeare
    cfg = TrainConfig.preset(model="bigram", out_dir=str(tmp_path / "bigram"),
                             max_iters=300, lr_decay_iters=300, eval_interval=150, sample_chars=0)
    assert cfg.block_size == 8 and cfg.batch_size == 32  # the bigram preset
    result = train(cfg, log=quiet)
    assert result.full_val_loss < 3.3


def test_presets_follow_nanogpt_and_ours():
    nano = TrainConfig.preset(preset="nanogpt")  # nanoGPT's CPU recipe, exactly
    assert (nano.n_layer, nano.n_head, nano.n_embd, nano.block_size, nano.batch_size, nano.max_iters) == (4, 4, 128, 64, 12, 2000)
    assert (nano.learning_rate, nano.min_lr, nano.warmup_iters, nano.beta2, nano.weight_decay, nano.grad_clip,
            nano.dropout, nano.lr_decay_iters, nano.bias, nano.eval_interval, nano.eval_iters) == (
        1e-3, 1e-4, 100, 0.99, 0.1, 1.0, 0.0, 2000, False, 250, 20)
    cpu = TrainConfig.preset()  # the default: our recipe (docs/recipe.md)
    assert (cpu.n_layer, cpu.n_head, cpu.n_embd, cpu.block_size, cpu.batch_size, cpu.max_iters) == (1, 4, 128, 64, 24, 2800)
    assert (cpu.learning_rate, cpu.min_lr, cpu.warmup_iters, cpu.beta2, cpu.weight_decay, cpu.grad_clip,
            cpu.dropout, cpu.lr_decay_iters, cpu.bias, cpu.eval_interval) == (6e-3, 6e-4, 100, 0.99, 0.1, 1.0, 0.0,
                                                                             2800, False, 500)
    assert TrainConfig.preset(preset="nanogpt", n_layer=2).n_layer == 2  # flags still override it
    assert TrainConfig.preset(learning_rate=1e-3).min_lr == pytest.approx(1e-4)  # the floor follows the rate
    assert TrainConfig.preset(learning_rate=1e-3, min_lr=5e-4).min_lr == 5e-4
    with pytest.raises(ValueError, match="--min_lr 0.01 is above --learning_rate"):
        TrainConfig.preset(min_lr=1e-2).validate()
    with pytest.raises(ValueError, match="--preset must be nanogpt"):
        TrainConfig.preset(preset="gpt2")
    gpu = TrainConfig.preset(device="cuda")
    assert (gpu.n_layer, gpu.n_head, gpu.n_embd, gpu.block_size, gpu.batch_size, gpu.max_iters, gpu.dropout,
            gpu.bias) == (6, 6, 384, 256, 64, 5000, 0.2, False)
    assert TrainConfig.preset(bias=True).bias  # --bias turns them on
    assert TrainConfig.preset(n_layer=2, dropout=None).n_layer == 2


@pytest.mark.parametrize("reason, n_layer", [("no GPU here", 1), (None, 6)])
def test_device_auto_takes_the_preset_of_the_device_it_resolves_to(reason, n_layer, monkeypatch):
    monkeypatch.setattr(backend, "cuda_unavailable_reason", lambda: reason)
    cfg = TrainConfig.preset(device="auto")
    warnings = []
    assert cfg.device == "auto" and resolve_device(cfg.device, warnings.append) == ("cpu" if reason else "cuda")
    assert warnings == (["--device auto: running on the CPU (no GPU here)"] if reason else [])
    assert (cfg.n_layer, cfg.block_size) == ((1, 64) if n_layer == 1 else (6, 256))
    assert TrainConfig.preset(device="auto", model="bigram").block_size == 8  # the bigram's own preset


def run_cli(script, *args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env_extra or {}))
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_command_lines_train_and_sample(tmp_path, shakespeare_path):
    out = tmp_path / "cli"
    r = run_cli("train_shakespeare.py", "--out_dir", str(out), "--max_iters", "10", "--eval_interval", "5",
                "--n_layer", "1", "--n_embd", "16", "--n_head", "2", "--eval_iters", "2", "--sample_chars", "20",
                env_extra={"MINIGPT_DATA": shakespeare_path})
    assert r.returncode == 0, r.stderr
    assert "val loss over the whole validation split" in r.stdout and "step 10:" in r.stdout
    assert "iter 10/10" in r.stderr  # the progress line
    r = run_cli("sample.py", "--out_dir", str(out), "--start", "ROMEO:", "--num_samples", "2",
                "--max_new_tokens", "15", "--seed", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ROMEO:") == 2
    again = run_cli("sample.py", "--out_dir", str(out), "--start", "ROMEO:", "--num_samples", "2",
                    "--max_new_tokens", "15", "--seed", "3")
    assert again.stdout == r.stdout
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("JULIET:\n")
    r = run_cli("sample.py", "--out_dir", str(out), "--start", f"FILE:{prompt}", "--max_new_tokens", "5")
    assert r.returncode == 0 and r.stdout.startswith("JULIET:\n")


def test_generated_text_is_sampled_without_dropout():
    import minigpt
    from minigpt.training.evaluate import generate_text

    tok = CharTokenizer.from_text("abcdefgh\n")
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=8, dropout=0.5))
    m.train()
    minigpt.manual_seed(4)
    in_train_mode = generate_text(m, tok, "ab", 20)
    assert m.training  # the mode is given back
    m.eval()
    minigpt.manual_seed(4)
    assert generate_text(m, tok, "ab", 20) == in_train_mode


def test_the_command_line_preset_flag_selects_nanogpts_recipe():
    from minigpt.commands import build_parser  # noqa: PLC0415
    from minigpt.commands.train import config_from  # noqa: PLC0415

    cfg = config_from(build_parser().parse_args(["train", "--preset", "nanogpt", "--seed", "3"]))
    assert (cfg.n_layer, cfg.batch_size, cfg.max_iters, cfg.learning_rate, cfg.min_lr, cfg.seed) == (4, 12, 2000, 1e-3, 1e-4, 3)
    assert config_from(build_parser().parse_args(["train"])) == TrainConfig()  # the command's defaults are Python's
    helps = subprocess.run([sys.executable, "-m", "minigpt", "train", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "default: 2800; --preset nanogpt: 2000; GPU: 5000; bigram: 3000" in " ".join(helps.split())
    assert "--preset {nanogpt}" in helps and "--dtype {float32,float64}" in helps


def test_the_model_and_optimizer_are_chosen_where_they_are_built():
    from minigpt import fast, optim  # noqa: PLC0415
    from minigpt.train import build_model, build_optimizer  # noqa: PLC0415

    for reference, (model_type, optimizer_type) in ((False, (fast.GPT, fast.AdamW)), (True, (nn.GPT, optim.AdamW))):
        cfg = TrainConfig.preset(reference=reference)
        model = build_model(cfg, 65)
        assert type(model) is model_type and type(build_optimizer(model, cfg)) is optimizer_type
