"""Fine-tuning from a Hugging Face GPT-2 folder: a model pretrained here on one part of a text,
saved in the Hub's format, then trained with --init_from on another part, beats the same model
trained from scratch for the same steps; and the command's rules for --init_from."""

import os
import subprocess
import sys

import pytest

from minigpt import checkpoint
from minigpt.train import train
from minigpt.training.config import TrainConfig
from minigpt.training.metrics import read_metrics


def quiet(msg):
    pass


SMALL = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=16, eval_iters=4, sample_chars=0,
             warmup_iters=10, learning_rate=3e-3)


@pytest.fixture(scope="module")
def parts(tmp_path_factory, shakespeare_path_module):
    text = open(shakespeare_path_module, encoding="utf-8").read()
    folder = tmp_path_factory.mktemp("parts")
    (folder / "a.txt").write_text(text[:300_000], encoding="utf-8")  # the first part: pretraining
    (folder / "b.txt").write_text(text[600_000:700_000], encoding="utf-8")  # another part: fine-tuning
    return folder


@pytest.fixture(scope="module")
def shakespeare_path_module(tmp_path_factory):
    from minigpt.data import load_text

    path = tmp_path_factory.mktemp("text") / "shakespeare.txt"
    path.write_text(load_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pretrained_dir(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("pre")
    cfg = TrainConfig.preset(data=str(parts / "a.txt"), out_dir=str(out / "run"), tokenizer="bpe", vocab_size=320,
                             max_iters=300, lr_decay_iters=300, eval_interval=300, **SMALL)
    train(cfg, log=quiet)
    ck = checkpoint.load(out / "run")
    ck.model.save_pretrained(out / "hf", tokenizer=ck.tokenizer)
    return out / "hf"


def test_fine_tuning_from_a_folder_beats_training_from_scratch(parts, pretrained_dir, tmp_path):
    steps = dict(max_iters=60, lr_decay_iters=60, eval_interval=60, batch_size=16, eval_iters=4, sample_chars=0)
    tuned = train(TrainConfig.preset(init_from=str(pretrained_dir), data=str(parts / "b.txt"),
                                     out_dir=str(tmp_path / "tuned"), learning_rate=1e-3, **steps), log=quiet)
    scratch = train(TrainConfig.preset(data=str(parts / "b.txt"), out_dir=str(tmp_path / "scratch"),
                                       tokenizer="bpe", vocab_size=320, max_iters=60, lr_decay_iters=60,
                                       **{k: v for k, v in SMALL.items() if k not in ("batch_size", "eval_iters")},
                                       eval_interval=60, eval_iters=4), log=quiet)
    rows = read_metrics(tmp_path / "tuned" / "metrics.csv")
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # the new part's loss drops
    assert tuned.full_val_bpc < scratch.full_val_bpc - 0.3  # and beats the same steps from scratch
    ck = checkpoint.load(tmp_path / "tuned")
    assert ck.tokenizer == checkpoint.load(pretrained_dir.parent / "run").tokenizer  # the weights' own tokenizer
    assert ck.model.config.n_layer == 2 and ck.model.config.block_size == 32


def run(*args):
    env = dict(os.environ)
    env.pop("MINIGPT_DATA", None)
    return subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.mark.parametrize("args, says", [
    (["--n_layer", "4"], "--n_layer cannot be given with it"),
    (["--model", "bigram"], "--model cannot be given with it"),
    (["--tokenizer", "char"], "trained with the bpe tokenizer"),
    (["--block_size", "64"], "larger than the weights' context (32)"),
    (["--preset", "nanogpt"], "--preset does not apply"),
])
def test_what_the_weights_decide_cannot_be_given(pretrained_dir, args, says):
    r = run("train", "--init_from", str(pretrained_dir), *args)
    assert r.returncode == 2 and says in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sample_streams_from_a_folder(pretrained_dir):
    r = run("sample", "--init_from", str(pretrained_dir), "--start", "ROMEO:", "--num_samples", "2",
            "--max_new_tokens", "10", "--top_p", "0.9", "--seed", "3")
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("---------------\n")
    assert len(samples) == 2 and all(s.startswith("ROMEO:") for s in samples)
    again = run("sample", "--init_from", str(pretrained_dir), "--start", "ROMEO:", "--num_samples", "2",
                "--max_new_tokens", "10", "--top_p", "0.9", "--seed", "3")
    assert again.stdout == r.stdout  # the seed decides


@pytest.mark.parametrize("args, says", [
    (["--top_p", "0"], "--top_p must be in (0, 1]"),
    (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--out_dir", "x"], "give one"),
    (["--start", ""], "at least one token"),
])
def test_bad_sampling_flags(pretrained_dir, args, says):
    r = run("sample", "--init_from", str(pretrained_dir), *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr


def test_sample_without_the_files_is_one_clear_error(tmp_path):
    r = run("sample", "--init_from", str(tmp_path))
    assert r.returncode == 2 and "holds no model.safetensors" in r.stderr
