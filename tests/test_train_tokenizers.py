"""Training with a BPE or GPT-2's tokenizer: the tokenizer is trained on the training split only,
rides in the checkpoint, decodes the samples, and the loss is also reported in bits per character."""

import json
import math

import numpy as np
import pytest

from minigpt import checkpoint
from minigpt.tokenizers import BPETokenizer, GPT2Tokenizer
from minigpt.train import train
from minigpt.training.config import TrainConfig, resume_config
from minigpt.training.metrics import read_metrics
from tests.commandline import run_minigpt as run
from tests.hubserver import HubServer
from tests.test_hub import REPO, gpt2_shaped_files


def quiet(msg):
    pass


def tiny(tmp_path, data, **kw):
    cfg = dict(data=str(data), out_dir=str(tmp_path / "run"), n_layer=1, n_head=2, n_embd=16, block_size=16,
               batch_size=8, max_iters=20, lr_decay_iters=20, warmup_iters=2, eval_interval=10, eval_iters=2,
               sample_chars=40, tokenizer="bpe", vocab_size=300)
    cfg.update(kw)
    return TrainConfig.preset(**cfg)


@pytest.fixture
def text_file(tmp_path, shakespeare_path):
    """Shakespeare's first 45,000 characters, then words found only in the validation split."""
    text = open(shakespeare_path, encoding="utf-8").read()[:45_000]
    text += "\nqqqq zzzz qqqq" * 30
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    return path


def test_bpe_is_trained_on_the_training_split_and_saved_in_the_checkpoint(tmp_path, text_file):
    result = train(tiny(tmp_path, text_file), log=quiet)
    ck = checkpoint.load(result.out_dir / "latest.npz")
    tok = ck.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 300 and tok.special_tokens == {"<|endoftext|>": 299}
    assert (ord("q"), ord("q")) not in tok.merges  # qqqq occurs only in the last 10%
    assert result.sample.startswith("\n") and len(result.sample) <= 41
    assert ck.model.config.vocab_size == 300


def test_bits_per_character_follow_from_the_validation_text(tmp_path, text_file):
    result = train(tiny(tmp_path, text_file), log=quiet)
    tok = checkpoint.load(result.out_dir).tokenizer
    text = text_file.read_text(encoding="utf-8")
    val_text = text[int(0.9 * len(text)):]
    ids = tok.encode(val_text)
    chars_scored = len(val_text) - len(tok.decode(ids[:1]))  # every character but the first token's
    per_char = (len(ids) - 1) / chars_scored / math.log(2)
    assert result.full_val_bpc == pytest.approx(result.full_val_loss * per_char, rel=1e-6)
    for row in read_metrics(result.out_dir / "metrics.csv"):
        assert float(row["val_bpc"]) == pytest.approx(float(row["val_loss"]) * per_char, rel=1e-4)
    assert per_char < 1 / math.log(2)  # a BPE token holds more than one character


def test_a_bpe_run_resumes_with_its_own_tokenizer(tmp_path, text_file, monkeypatch):
    calls = {"n": 0}

    def stop_at_7():
        calls["n"] += 1
        return calls["n"] == 7

    first = train(tiny(tmp_path, text_file), log=quiet, should_stop=stop_at_7)
    assert first.interrupted

    def no_training(*args, **kwargs):
        raise AssertionError("a resumed run must not train its tokenizer again")

    with monkeypatch.context() as mp:
        mp.setattr(BPETokenizer, "train", no_training)
        resumed = train(resume_config(first.out_dir), log=quiet)
    assert resumed.iterations == 20
    straight = train(tiny(tmp_path / "b", text_file), log=quiet)
    np.testing.assert_array_equal(checkpoint.load(straight.out_dir / "latest.npz").model.state_dict()["lm_head.weight"],
                                  checkpoint.load(resumed.out_dir / "latest.npz").model.state_dict()["lm_head.weight"])
    with pytest.raises(ValueError, match="--tokenizer char"):
        resume_config(first.out_dir, tokenizer="char")


def test_the_bigram_model_trains_on_bpe_tokens(tmp_path, text_file):
    result = train(tiny(tmp_path, text_file, model="bigram", max_iters=4, eval_interval=2), log=quiet)
    assert checkpoint.load(result.out_dir).model.vocab_size == 300


def edit_meta(path, change):
    """Rewrite a checkpoint's JSON metadata with ``change(meta)`` applied (its arrays untouched)."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["__meta__"].tobytes())
    change(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_sampling_a_bpe_checkpoint_takes_any_prompt(tmp_path, text_file):
    train(tiny(tmp_path, text_file), log=quiet)
    r = run("sample", "--out_dir", str(tmp_path / "run"), "--start", "Crème brûlée 😀", "--num_samples", "1",
            "--max_new_tokens", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Crème brûlée 😀")  # bytes the text never had still encode


def test_a_damaged_tokenizer_in_a_checkpoint_is_one_clear_error(tmp_path, text_file):
    train(tiny(tmp_path, text_file), log=quiet)
    path = tmp_path / "run" / "best.npz"
    edit_meta(path, lambda meta: meta["tokenizer"]["merges"].__setitem__(3, [1, 99999]))
    r = run("sample", "--out_dir", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"error: {path} has a damaged tokenizer: malformed bpe tokenizer table: "
                                             "merge 3 (1, 99999) uses a token that no earlier merge or byte makes"]


@pytest.mark.parametrize("args, message", [
    (["--vocab_size", "300"], "--vocab_size sets the size of a BPE"),
    (["--tokenizer", "bpe", "--vocab_size", "9000", "--model", "bigram"], "too big for this vocabulary"),
    (["--tokenizer", "bpe", "--vocab_size", "256"], "--vocab_size must be at least 257"),
    (["--tokenizer", "wordpiece"], "argument --tokenizer: invalid choice"),
])
def test_bad_tokenizer_flags(args, message):
    r = run("train", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_vocabulary_the_text_cannot_fill_is_capped_with_a_warning(tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("ab ab ab ab\n" * 400, encoding="utf-8")
    warnings = []
    cfg = tiny(tmp_path, data, vocab_size=1000, max_iters=2, eval_interval=1, block_size=4)
    train(cfg, log=quiet, warn=warnings.append)
    about_vocab = [w for w in warnings if "matplotlib" not in w]  # (no loss.png without the plot extra)
    assert len(about_vocab) == 1 and "--vocab_size: the text gives only" in about_vocab[0]


def test_gpt2_tokenizer_from_the_hub(tmp_path, text_file, monkeypatch):
    vocab, merges = gpt2_shaped_files()
    server = HubServer({f"{REPO}/resolve/main/vocab.json": vocab, f"{REPO}/resolve/main/merges.txt": merges})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    try:
        result = train(tiny(tmp_path, text_file, tokenizer="gpt2", vocab_size=None, n_embd=8, max_iters=2,
                            eval_interval=1), log=quiet)
    finally:
        server.close()
    tok = checkpoint.load(result.out_dir).tokenizer
    assert isinstance(tok, GPT2Tokenizer) and tok.vocab_size == 50257
    assert checkpoint.load(result.out_dir).model.config.vocab_size == 50257
    r = run("train", "--tokenizer", "gpt2", "--max_iters", "1",
            env={"HF_ENDPOINT": server.url, "MINIGPT_CACHE": str(tmp_path / "empty")})
    assert r.returncode == 2 and "put vocab.json and merges.txt" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_checkpoint_whose_tokenizer_outgrows_its_model_is_refused(tmp_path, text_file):
    train(tiny(tmp_path, text_file), log=quiet)
    path = tmp_path / "run" / "best.npz"
    edit_meta(path, lambda meta: meta["tokenizer"].update(special_tokens={"<|endoftext|>": 10**7}))
    r = run("sample", "--out_dir", str(path))
    assert r.returncode == 2 and "a tokenizer of 10000001 tokens for a model of 300 outputs" in r.stderr


def test_an_older_run_resumes_with_the_default_tokenizer_named(tmp_path, text_file):
    cfg = tiny(tmp_path, text_file, tokenizer="char", vocab_size=None, max_iters=2, eval_interval=1)
    train(cfg, log=quiet)
    path = tmp_path / "run" / "latest.npz"  # as a checkpoint from before tokenizers were settings

    def older(meta):
        for key in ("tokenizer", "vocab_size", "init_from"):
            del meta["state"]["train_config"][key]

    edit_meta(path, older)
    assert resume_config(tmp_path / "run", tokenizer="char", max_iters=3).tokenizer == "char"
