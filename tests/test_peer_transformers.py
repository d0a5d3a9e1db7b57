"""minigpt against Hugging Face transformers itself (the `peer` extra: PyTorch and transformers;
skipped where they are not installed): a GPT2LMHeadModel saved by transformers loads into minigpt
with the same logits and the same greedy continuation, and minigpt's export loads into
transformers with the same logits and tokenizer."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the peer extra (PyTorch) is not installed")
transformers = pytest.importorskip("transformers", reason="the peer extra (transformers) is not installed")

import minigpt  # noqa: E402
from minigpt import nn  # noqa: E402
from minigpt.data import load_text  # noqa: E402
from minigpt.tokenizers import BPETokenizer  # noqa: E402


def hf_model(n_layer=2, n_head=4, n_embd=32, vocab=101, positions=48, seed=0):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=n_embd, n_layer=n_layer,
                                     n_head=n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # biases and gains away from their init (zeros and ones), so a lost one shows
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


IDX = np.random.default_rng(0).integers(0, 101, (3, 20))


def test_a_transformers_folder_loads_with_the_same_logits_and_continuation(tmp_path):
    peer = hf_model()
    peer.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = nn.GPT.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        want = peer(torch.from_numpy(IDX)).logits.numpy()
    np.testing.assert_allclose(ours(IDX)[0].data, want, rtol=1e-4, atol=1e-5)
    # greedy, with the key/value cache on both sides: the same tokens
    prompt = IDX[:1, :6]
    with torch.no_grad():
        theirs = peer.generate(torch.from_numpy(prompt), max_new_tokens=30, do_sample=False, use_cache=True,
                               pad_token_id=0).numpy()
    mine = ours.generate(prompt, 30, temperature=0.0)
    np.testing.assert_array_equal(mine, theirs)


def test_minigpts_export_loads_into_transformers(tmp_path):
    minigpt.manual_seed(1)
    tok = BPETokenizer.train(load_text()[:100_000], 400, special_tokens=["<|endoftext|>"])
    for bias in (True, False):
        ours = nn.GPT(nn.GPTConfig(block_size=32, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=16,
                                   bias=bias)).eval()
        for p in ours.parameters():
            p.data[...] += 0.05 * np.random.default_rng(2).standard_normal(p.shape).astype(np.float32)
        ours.save_pretrained(tmp_path / f"m{bias}", tokenizer=tok)
        peer = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / f"m{bias}").eval()
        idx = np.random.default_rng(3).integers(0, tok.vocab_size, (2, 32))
        with torch.no_grad():
            want = peer(torch.from_numpy(idx)).logits.numpy()
        np.testing.assert_allclose(ours(idx)[0].data, want, rtol=1e-4, atol=1e-5)
    peer_tok = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "mTrue")
    text = load_text()[200_000:205_000] + " Crème brûlée 😀 'll 123"
    assert peer_tok.encode(text) == tok.encode(text).tolist()
    assert peer_tok.decode(tok.encode(text).tolist()) == text


def test_a_folder_saved_by_transformers_with_its_tokenizer_samples(tmp_path):
    """transformers 5 saves a tokenizer as tokenizer.json alone: minigpt reads that too."""
    import subprocess
    import sys

    tok = BPETokenizer.train(load_text()[:100_000], 400, special_tokens=["<|endoftext|>"])
    ours = nn.GPT(nn.GPTConfig(block_size=32, vocab_size=400, n_layer=1, n_head=2, n_embd=16))
    ours.save_pretrained(tmp_path / "src", tokenizer=tok)
    peer = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "src")
    peer_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "src")
    peer.save_pretrained(tmp_path / "hf")
    peer_tok.save_pretrained(tmp_path / "hf")
    from minigpt import pretrained

    ours_again = pretrained.load_tokenizer(tmp_path / "hf")
    text = "ROMEO: Crème brûlée 😀 <|endoftext|> 'll 123"
    assert ours_again.encode(text, allowed_special="all").tolist() == tok.encode(text, allowed_special="all").tolist()
    r = subprocess.run([sys.executable, "-m", "minigpt", "sample", "--init_from", str(tmp_path / "hf"), "--start",
                        "ROMEO:", "--num_samples", "1", "--max_new_tokens", "5"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("ROMEO:"), r.stderr
