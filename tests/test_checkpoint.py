"""Checkpoints: full round trips, and refusal of anything damaged, foreign or pickled."""

import io
import json
import zipfile

import numpy as np
import pytest

from minigpt import checkpoint, nn, optim
from minigpt.checkpoint import CheckpointError
from minigpt.data import CharTokenizer


def trained_gpt():
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=6, n_layer=1, n_head=2, n_embd=8))
    opt = optim.AdamW(m.parameters(), lr=1e-2)
    idx = np.random.default_rng(0).integers(0, 6, (2, 8))
    for _ in range(3):
        opt.zero_grad()
        m(idx, idx)[1].backward()
        opt.step()
    return m, opt, idx


def test_round_trip_restores_model_optimizer_tokenizer_and_state(tmp_path):
    m, opt, idx = trained_gpt()
    tok = CharTokenizer.from_text("abcdef")
    checkpoint.save(tmp_path / "c.npz", m, optimizer=opt, tokenizer=tok, iter_num=3, best_val_loss=1.5,
                    note={"nested": [1, 2]})
    ck = checkpoint.load(tmp_path / "c.npz")
    assert ck.config == m.config and ck.tokenizer == tok
    assert ck.state == {"iter_num": 3, "best_val_loss": 1.5, "note": {"nested": [1, 2]}}
    assert not ck.model.training
    assert ck.model.lm_head.weight is ck.model.transformer.wte.weight
    m.eval()
    np.testing.assert_array_equal(ck.model(idx)[0].data, m(idx)[0].data)
    opt2 = optim.AdamW(ck.model.parameters())
    opt2.load_state_dict(ck.optimizer_state)
    for (i, a), (j, b) in zip(sorted(opt.state_dict()["state"].items()), sorted(opt2.state_dict()["state"].items())):
        assert i == j and a["step"] == b["step"] == 3
        np.testing.assert_array_equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert opt2.param_groups[0]["lr"] == 1e-2


def test_read_state_reads_the_metadata_alone(tmp_path, monkeypatch):
    m, _, _ = trained_gpt()
    checkpoint.save(tmp_path / "c.npz", m, iter_num=7, train_config={"max_iters": 9})
    read = []
    real_getitem = np.lib.npyio.NpzFile.__getitem__

    def spy(self, key):
        read.append(key)
        return real_getitem(self, key)

    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", spy)
    assert checkpoint.read_state(tmp_path / "c.npz") == {"iter_num": 7, "train_config": {"max_iters": 9}}
    assert read == ["__meta__"]  # no weight was loaded
    (tmp_path / "foreign.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        checkpoint.read_state(tmp_path / "foreign.npz")


def test_bigram_round_trip_and_out_dir_means_best(tmp_path):
    m = nn.BigramLanguageModel(7)
    checkpoint.save(tmp_path / checkpoint.BEST, m)
    ck = checkpoint.load(tmp_path)
    assert isinstance(ck.model, nn.BigramLanguageModel) and ck.config == {"vocab_size": 7}
    np.testing.assert_array_equal(ck.model.token_embedding_table.weight.data, m.token_embedding_table.weight.data)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        checkpoint.load(tmp_path)


def test_truncated_checkpoint(tmp_path):
    m, _, _ = trained_gpt()
    checkpoint.save(tmp_path / "c.npz", m)
    raw = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "c.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        checkpoint.load(tmp_path / "c.npz")


def test_foreign_npz_and_random_bytes(tmp_path):
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        checkpoint.load(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "junk.npz")


def test_pickled_object_is_refused_without_being_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed!')",))

    path = tmp_path / "evil.npz"
    meta = json.dumps({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "model": {"type": "bigram",
                       "vocab_size": 2}}).encode()
    np.savez(path, __meta__=np.frombuffer(meta, np.uint8),
             **{"model/token_embedding_table.weight": np.array([Boom()], dtype=object)})
    with pytest.raises(CheckpointError, match="pickled objects"):
        checkpoint.load(path)


def test_shapes_that_do_not_match_the_config(tmp_path):
    m, _, _ = trained_gpt()
    checkpoint.save(tmp_path / "c.npz", m)
    with zipfile.ZipFile(tmp_path / "c.npz") as z:
        members = {n: z.read(n) for n in z.namelist()}
    buf = io.BytesIO()
    np.save(buf, np.zeros((5, 5), np.float32))
    members["model/transformer.wpe.weight.npy"] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    with pytest.raises(CheckpointError, match=r"does not match its own config.*transformer\.wpe\.weight"):
        checkpoint.load(tmp_path / "bad.npz")


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    m, _, _ = trained_gpt()
    path = tmp_path / "c.npz"
    checkpoint.save(path, m, iter_num=1)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save(path, m, iter_num=2)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp file left behind
    assert checkpoint.load(path).state["iter_num"] == 1
