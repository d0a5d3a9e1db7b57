"""Fine-tuning from a Hugging Face GPT-2 folder: a model pretrained here on one part of a text,
saved in the Hub's format, then trained with --init_from on another part, beats the same model
trained from scratch for the same steps; and the command's rules for --init_from."""


import pytest

from minigpt import checkpoint
from minigpt.train import train
from minigpt.training.config import TrainConfig
from tests.commandline import run_minigpt as run


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
    from minigpt import nn, pretrained
    from minigpt.data import train_val_split
    from minigpt.training.evaluate import split_loss

    schedule = dict(max_iters=60, lr_decay_iters=60, eval_interval=60, batch_size=16, eval_iters=4, sample_chars=0,
                    learning_rate=1e-3, min_lr=1e-4, warmup_iters=10)
    tuned = train(TrainConfig.preset(init_from=str(pretrained_dir), data=str(parts / "b.txt"),
                                     out_dir=str(tmp_path / "tuned"), **schedule), log=quiet)
    shape = {k: v for k, v in SMALL.items() if k in ("n_layer", "n_head", "n_embd", "block_size")}
    scratch = train(TrainConfig.preset(data=str(parts / "b.txt"), out_dir=str(tmp_path / "scratch"), tokenizer="bpe",
                                       vocab_size=320, **shape, **schedule), log=quiet)
    # the whole validation split of the new part, scored by the pretrained weights before any step
    before_model = nn.GPT.from_pretrained(pretrained_dir)
    tok = pretrained.load_tokenizer(pretrained_dir)
    val = tok.encode(train_val_split(open(parts / "b.txt", encoding="utf-8").read())[1], allowed_special="all")
    before = split_loss(before_model, val, before_model.config.block_size)
    assert tuned.full_val_loss < before - 0.05  # the new part's whole-split loss drops
    assert tuned.full_val_bpc < scratch.full_val_bpc - 0.3  # and beats the same steps from scratch
    ck = checkpoint.load(tmp_path / "tuned")
    assert ck.tokenizer == checkpoint.load(pretrained_dir.parent / "run").tokenizer  # the weights' own tokenizer
    assert ck.model.config.n_layer == 2 and ck.model.config.block_size == 32


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


def test_a_fine_tuning_run_resumes_with_more_outputs_than_tokens(parts, tmp_path):
    """Pretrained weights may have more outputs than their tokenizer has tokens (a padded vocabulary)."""
    from minigpt import nn
    from minigpt.tokenizers import BPETokenizer

    tok = BPETokenizer.train(open(parts / "a.txt", encoding="utf-8").read()[:50_000], 300)
    nn.GPT(nn.GPTConfig(block_size=16, vocab_size=320, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "hf", tok)
    calls = {"n": 0}

    def stop_at_3():
        calls["n"] += 1
        return calls["n"] == 3

    cfg = TrainConfig.preset(init_from=str(tmp_path / "hf"), data=str(parts / "b.txt"), out_dir=str(tmp_path / "run"),
                             max_iters=6, eval_interval=3, eval_iters=1, sample_chars=20)
    assert train(cfg, log=quiet, should_stop=stop_at_3).interrupted
    from minigpt.training.config import resume_config

    resumed = train(resume_config(tmp_path / "run"), log=quiet)
    assert resumed.iterations == 6 and len(resumed.sample) <= 21  # sampled ids stay inside the tokenizer
    assert checkpoint.load(tmp_path / "run").model.config.vocab_size == 320


def test_sample_refuses_a_tokenizer_larger_than_the_model(tmp_path, parts):
    from minigpt import nn
    from minigpt.tokenizers import BPETokenizer

    tok = BPETokenizer.train(open(parts / "a.txt", encoding="utf-8").read()[:50_000], 400)
    nn.GPT(nn.GPTConfig(block_size=16, vocab_size=300, n_layer=1, n_head=2, n_embd=16)).save_pretrained(tmp_path / "hf", tok)
    r = run("sample", "--init_from", str(tmp_path / "hf"), "--start", "hello world, this is long")
    assert r.returncode == 2 and "tokenizer has 400 tokens but the model only 300 outputs" in r.stderr


def test_sample_init_from_gpt2_offline_names_every_file_and_folder(tmp_path):
    env_run = run("sample", "--init_from", "gpt2", "--start", "hi", timeout=120,
                  env={"MINIGPT_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"})
    lines = env_run.stderr.strip().splitlines()
    assert env_run.returncode == 2 and len(lines) == 1, env_run.stderr
    for part in ("config.json and model.safetensors", str(tmp_path / "hub" / "openai-community--gpt2"),
                 "vocab.json and merges.txt"):
        assert part in lines[0]
