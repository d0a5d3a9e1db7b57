"""GPT-2 folders: safetensors read and written, Hugging Face's layout mapped onto minigpt's GPT,
export -> import exact, downloads from a local Hub, top-p sampling, and fine-tuning from a folder.

The GPT-2-format files here are written by the tests themselves, in the layout the Hub's files have
(Conv1D weights stored (in, out), causal-mask buffers, with or without the ``transformer.`` prefix),
by code that does not use minigpt's converter. tests/test_peer_transformers.py checks the same
against transformers itself where it is installed."""

import hashlib
import json
import struct

import numpy as np
import pytest

import minigpt
from minigpt import fast, hub, nn, pretrained, safetensors
from minigpt.nn.gpt import nucleus, sample_next
from tests.hubserver import HubServer

CONFIG = nn.GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=8)


def hf_config(c, **extra):
    """A config.json as transformers writes GPT-2's."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_ctx": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer,
            "n_head": c.n_head, "n_inner": None, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05,
            "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, **extra}


def write_safetensors(path, tensors):
    """safetensors written byte by byte from its specification (not minigpt's writer)."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def gpt2_folder(model, folder, prefix="transformer.", buffers=True, lm_head=False):
    """``model``'s weights as a Hub GPT-2 folder: Conv1D layers stored (in, out), mask buffers."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        name = prefix + key[len("transformer."):]
        conv1d = any(key.endswith(s) for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        tensors[name] = np.asarray(value).T if conv1d else np.asarray(value)
    if buffers:
        T = model.config.block_size
        for i in range(model.config.n_layer):
            tensors[f"{prefix}h.{i}.attn.bias"] = np.tril(np.ones((T, T), np.float32))[None, None]
            tensors[f"{prefix}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    if lm_head:
        tensors["lm_head.weight"] = np.asarray(model.state_dict()["lm_head.weight"])
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
    return folder


@pytest.fixture
def model():
    minigpt.manual_seed(0)
    m = nn.GPT(CONFIG)
    for p in m.parameters():  # biases and gains away from their init, so a lost one shows
        p.data[...] += 0.1 * np.random.default_rng(1).standard_normal(p.shape).astype(np.float32)
    return m.eval()


IDX = np.array([[1, 5, 9, 2, 7, 30, 39, 0], [3, 3, 3, 8, 1, 2, 4, 6]])


# ----------------------------------------------------------------------------- safetensors
def test_safetensors_by_the_specification(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    write_safetensors(tmp_path / "x.safetensors", {"a": a, "b": np.ones(4, np.float32)})
    got = safetensors.load(tmp_path / "x.safetensors")
    assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], a) and got["a"].dtype == np.float32
    safetensors.save(tmp_path / "y.safetensors", {"w": a, "i": np.array([1, -2], np.int64)}, {"format": "pt"})
    raw = (tmp_path / "y.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    assert (8 + n) % 8 == 0 and header["__metadata__"] == {"format": "pt"}
    start, end = header["w"]["data_offsets"]
    assert header["w"]["dtype"] == "F32" and np.array_equal(np.frombuffer(raw[8 + n + start:8 + n + end], "<f4"), a.ravel())


def test_bfloat16_is_widened_exactly(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # representable in bfloat16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    head = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + bits.tobytes())
    assert np.array_equal(safetensors.load(tmp_path / "b.safetensors")["w"], values)


@pytest.mark.parametrize("damage, says", [
    (lambda raw: raw[:4], "shorter than 8 bytes"),
    (lambda raw: struct.pack("<Q", 10**12) + raw[8:], "a header of"),
    (lambda raw: raw[:8] + b"x" + raw[9:], "not JSON"),
    (lambda raw: raw[:-8], "do not fit"),
])
def test_a_damaged_safetensors_file_is_one_clear_error(tmp_path, damage, says):
    write_safetensors(tmp_path / "x.safetensors", {"a": np.ones(8, np.float32)})
    (tmp_path / "x.safetensors").write_bytes(damage((tmp_path / "x.safetensors").read_bytes()))
    with pytest.raises(safetensors.SafetensorsError, match=says):
        safetensors.load(tmp_path / "x.safetensors")


# ----------------------------------------------------------------------------- GPT-2 folders
@pytest.mark.parametrize("prefix", ["transformer.", ""])  # transformers' save_pretrained, the Hub's original
@pytest.mark.parametrize("cls", [nn.GPT, fast.GPT])
def test_a_gpt2_folder_gives_the_same_logits(model, tmp_path, prefix, cls):
    folder = gpt2_folder(model, tmp_path / "m", prefix=prefix, lm_head=prefix == "")
    loaded = cls.from_pretrained(folder)
    assert type(loaded) is cls and not loaded.training
    assert loaded.config == nn.GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=8, bias=True)
    direct = cls(CONFIG).eval()  # the same weights put in directly
    direct.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(loaded(IDX)[0].data, direct(IDX)[0].data)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_export_then_import_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]
    again = nn.GPT.from_pretrained(tmp_path / "out")
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2
        np.testing.assert_array_equal(a, b)
    raw = safetensors.load(tmp_path / "out" / "model.safetensors")
    np.testing.assert_array_equal(raw["transformer.h.0.attn.c_attn.weight"],
                                  model.state_dict()["transformer.h.0.attn.c_attn.weight"].T)  # stored (in, out)
    assert "lm_head.weight" not in raw


def test_a_model_without_biases_is_written_with_zero_biases(tmp_path):
    minigpt.manual_seed(0)
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=8, bias=False)).eval()
    m.save_pretrained(tmp_path / "nb")
    raw = safetensors.load(tmp_path / "nb" / "model.safetensors")
    assert not raw["transformer.h.0.mlp.c_fc.bias"].any() and raw["transformer.ln_f.bias"].shape == (8,)
    again = nn.GPT.from_pretrained(tmp_path / "nb")
    assert again.config.bias
    np.testing.assert_array_equal(again(IDX[:, :8] % 20)[0].data, m(IDX[:, :8] % 20)[0].data)


def test_a_char_model_exports_with_its_tokenizer(tmp_path):
    from minigpt.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("hello world")
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=tok.vocab_size, n_layer=1, n_head=1, n_embd=4))
    m.save_pretrained(tmp_path / "c", tokenizer=tok)
    assert pretrained.load_tokenizer(tmp_path / "c") == tok
    assert json.loads((tmp_path / "c" / "config.json").read_text())["vocab_size"] == 8


@pytest.mark.parametrize("change, says", [
    (lambda d: d.update(activation_function="relu"), "activation_function is 'relu'"),
    (lambda d: d.update(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (lambda d: d.update(n_inner=7), "n_inner"),
    (lambda d: d.update(model_type="llama"), "not GPT-2"),
    (lambda d: d.update(n_embd=16), "wrong shape"),
    (lambda d: d.update(n_layer=3), "missing transformer.h.2"),
    (lambda d: d.clear() or d.update(), "lacks or garbles"),
])
def test_a_config_minigpt_cannot_honour_is_refused(model, tmp_path, change, says):
    folder = gpt2_folder(model, tmp_path / "m")
    d = json.loads((folder / "config.json").read_text())
    change(d)
    (folder / "config.json").write_text(json.dumps(d))
    with pytest.raises(pretrained.PretrainedError, match=says):
        nn.GPT.from_pretrained(folder)


def test_an_untied_lm_head_is_refused(model, tmp_path):
    folder = gpt2_folder(model, tmp_path / "m", lm_head=True)
    tensors = safetensors.load(folder / "model.safetensors")
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    write_safetensors(folder / "model.safetensors", tensors)
    with pytest.raises(pretrained.PretrainedError, match="ties them"):
        nn.GPT.from_pretrained(folder)


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config(CONFIG)))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")
    with pytest.raises(pretrained.PretrainedError, match="reads only safetensors"):
        nn.GPT.from_pretrained(tmp_path)


def test_block_size_crops_the_position_table(model, tmp_path):
    folder = gpt2_folder(model, tmp_path / "m")
    short = nn.GPT.from_pretrained(folder, block_size=8)
    assert short.config.block_size == 8
    np.testing.assert_array_equal(short(IDX)[0].data, model(IDX)[0].data)  # IDX is 8 long


# ----------------------------------------------------------------------------- from the Hub
def test_gpt2_weights_download_once_checked_against_the_pinned_sha256(model, tmp_path, monkeypatch):
    folder = gpt2_folder(model, tmp_path / "src", prefix="")
    files = {f"openai-community/gpt2/resolve/main/{n}": (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}
    server = HubServer(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    real = pretrained.MODELS["gpt2"]
    monkeypatch.setitem(pretrained.MODELS, "gpt2", pretrained.Pretrained(real.repo, real.sha256, 2, 2, 8))  # its shape
    try:
        # the real pinned hash: these test weights are refused and nothing is cached
        with pytest.raises(hub.HubError, match="sha256"):
            nn.GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
        cached = hub.repo_cache("openai-community/gpt2", tmp_path / "cache")
        assert sorted(p.name for p in cached.iterdir()) == [".lock", "config.json"]
        sha = hashlib.sha256(files["openai-community/gpt2/resolve/main/model.safetensors"]).hexdigest()
        monkeypatch.setitem(pretrained.MODELS, "gpt2", pretrained.Pretrained(real.repo, sha, 2, 2, 8))
        loaded = nn.GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
        np.testing.assert_array_equal(loaded(IDX)[0].data, model(IDX)[0].data)
        n = len(server.requests)
        nn.GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
        assert len(server.requests) == n  # from the cache
    finally:
        server.close()


def test_a_download_that_does_not_fit_its_config_is_not_kept(model, tmp_path, monkeypatch):
    folder = gpt2_folder(model, tmp_path / "src", prefix="")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["n_layer"] = 3
    files = {"openai-community/gpt2-medium/resolve/main/config.json": json.dumps(cfg).encode(),
             "openai-community/gpt2-medium/resolve/main/model.safetensors": (folder / "model.safetensors").read_bytes()}
    server = HubServer(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    real = pretrained.MODELS["gpt2-medium"]
    monkeypatch.setitem(pretrained.MODELS, "gpt2-medium", pretrained.Pretrained(real.repo, None, 3, 2, 8))
    try:  # the config is the name's shape, the weights are not the config's
        with pytest.raises(hub.HubError, match="missing transformer.h.2"):
            nn.GPT.from_pretrained("gpt2-medium", cache_dir=tmp_path / "cache")
    finally:
        server.close()
    assert not (hub.repo_cache("openai-community/gpt2-medium", tmp_path / "cache") / "model.safetensors").exists()


# ----------------------------------------------------------------------------- top-p
@pytest.mark.parametrize("p, kept", [(0.5, [0]), (0.6, [0, 1]), (0.8, [0, 1]), (0.81, [0, 1, 2]), (1.0, [0, 1, 2, 3]),
                                     (0.01, [0])])
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    probs = np.array([[0.15, 0.5, 0.05, 0.3]])  # ranked: 1 (0.5), 3 (0.3), 0 (0.15), 2 (0.05)
    rank_to_id = [1, 3, 0, 2]
    out = nucleus(probs, p)
    assert sorted(np.flatnonzero(out[0])) == sorted(rank_to_id[i] for i in kept)
    assert np.array_equal(out[0][out[0] > 0], probs[0][out[0] > 0])


def test_top_p_sampling_draws_only_from_the_nucleus():
    logits = np.log(np.array([[0.15, 0.5, 0.05, 0.3]]))
    minigpt.manual_seed(0)
    draws = np.array([sample_next(logits, top_p=0.75)[0] for _ in range(2000)])
    assert set(draws.tolist()) == {1, 3}
    assert abs((draws == 1).mean() - 0.5 / 0.8) < 0.04  # renormalised within the nucleus
    with pytest.raises(ValueError, match="top_p"):
        sample_next(logits, top_p=0.0)


def test_nonfinite_logits_are_one_clear_error():
    with pytest.raises(ValueError, match="not finite"):
        sample_next(np.array([[np.nan, 1.0]]))


def test_a_config_that_is_not_an_object_is_one_clear_error(model, tmp_path):
    folder = gpt2_folder(model, tmp_path / "m")
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(pretrained.PretrainedError, match="not a JSON object"):
        nn.GPT.from_pretrained(folder)


def test_a_sharded_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(hf_config(CONFIG)))
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(pretrained.PretrainedError, match="sharded"):
        nn.GPT.from_pretrained(tmp_path)


def test_a_char_model_is_exported_without_an_end_of_text_token(tmp_path):
    from minigpt.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("abz")
    nn.GPT(nn.GPTConfig(block_size=8, vocab_size=3, n_layer=1, n_head=1, n_embd=4)).save_pretrained(tmp_path, tok)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["eos_token_id"] is None and config["bos_token_id"] is None  # "z" is no end of text
    assert config["dtype"] == "float32"


def test_a_float64_model_says_so(tmp_path):
    m = nn.GPT(nn.GPTConfig(block_size=8, vocab_size=5, n_layer=1, n_head=1, n_embd=4)).to(dtype=np.float64)
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float64"
    assert safetensors.load(tmp_path / "model.safetensors")["transformer.wte.weight"].dtype == np.float64


def test_top_p_of_one_keeps_every_token():
    probs = np.array([[0.5, 0.5 - 1e-17, 1e-17]])
    minigpt.manual_seed(0)
    logits = np.log(np.array([[0.7, 0.3 - 1e-18, 1e-18]]))
    assert sample_next(logits, top_p=1.0, temperature=1.0) is not None
    np.testing.assert_array_equal(nucleus(probs, 1.0 + 1e-9) > 0, [[True, True, True]])


def test_the_downloaded_config_must_be_the_names_shape(model, tmp_path, monkeypatch):
    folder = gpt2_folder(model, tmp_path / "src", prefix="")
    files = {f"openai-community/gpt2/resolve/main/{n}": (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}
    server = HubServer(files)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:  # the real gpt2 is 12 layers of 768: a 2-layer model served under its name is refused
        with pytest.raises(hub.HubError, match="not gpt2's 12 of 768"):
            nn.GPT.from_pretrained("gpt2", cache_dir=tmp_path / "cache")
    finally:
        server.close()
