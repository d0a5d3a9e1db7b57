"""Downloads from the Hub (a local stand-in: tests/hubserver.py): cached once, checked, resumed, offline errors."""

import json
import random

import pytest

from minigpt import hub
from minigpt.tokenizers import GPT2Tokenizer, gpt2
from tests.hubserver import HubServer

REPO = "openai-community/gpt2"


def gpt2_shaped_files(seed=0):
    """vocab.json + merges.txt in GPT-2's format and size (256 bytes, 50,000 merges, <|endoftext|>
    = 50256), with made-up merges: what a real download must look like to be accepted."""
    rng = random.Random(seed)
    alphabet = gpt2.bytes_to_unicode()
    order = sorted(range(256), key=lambda b: (not (chr(b).isprintable() and b != 32), b))
    tokens = [alphabet[b] for b in order]
    seen, merges = set(tokens), []
    while len(merges) < 50_000:
        a, b = rng.choice(tokens[-2000:] if len(tokens) > 2000 else tokens), tokens[rng.randrange(256)]
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
            merges.append(f"{a} {b}")
    vocab = {t: i for i, t in enumerate(tokens)} | {"<|endoftext|>": 50256}
    return (json.dumps(vocab, ensure_ascii=False).encode(), ("#version: 0.2\n" + "\n".join(merges) + "\n").encode())


@pytest.fixture(scope="module")
def files():
    return gpt2_shaped_files()


@pytest.fixture
def hub_server(files, monkeypatch):
    vocab, merges = files
    server = HubServer({f"{REPO}/resolve/main/vocab.json": vocab, f"{REPO}/resolve/main/merges.txt": merges})
    monkeypatch.setenv("HF_ENDPOINT", server.url + "/")  # a trailing slash, as users write it
    yield server
    server.close()


def test_gpt2_tokenizer_downloads_once_into_the_cache(hub_server, tmp_path, capsys):
    tok = GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    assert tok.vocab_size == 50257 and tok.special_tokens == {"<|endoftext|>": 50256}
    assert len(tok.merges) == 50_000
    assert [p for p, _ in hub_server.requests] == [f"{REPO}/resolve/main/vocab.json", f"{REPO}/resolve/main/merges.txt"]
    err = capsys.readouterr().err
    assert "downloading vocab.json" in err and "MB" in err and "/s)" in err
    folder = hub.repo_cache(REPO, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "merges.txt", "vocab.json"]
    again = GPT2Tokenizer.from_pretrained("gpt2-xl", cache_dir=tmp_path)  # all four sizes share it
    assert len(hub_server.requests) == 2 and again == tok
    text = "Hello world <|endoftext|> again"
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


def test_the_cache_defaults_to_minigpts(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "c"))
    GPT2Tokenizer.from_pretrained("gpt2")
    assert (tmp_path / "c" / "hub" / "openai-community--gpt2" / "merges.txt").is_file()


def test_a_damaged_download_is_not_kept(hub_server, tmp_path):
    hub_server.damage.add(f"{REPO}/resolve/main/vocab.json")
    with pytest.raises(hub.HubError, match="not a valid vocab.json.*nothing was kept"):
        GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    folder = hub.repo_cache(REPO, tmp_path)
    assert [p.name for p in folder.iterdir()] == [".lock"]
    hub_server.damage.clear()  # the server is fixed: the next try succeeds
    assert GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path).vocab_size == 50257


@pytest.mark.parametrize("body", [json.dumps({"a": 0}).encode(), b"null", b"42", b"[1, 2]"])
def test_a_file_that_is_not_gpt2s_is_refused_and_not_kept(files, tmp_path, monkeypatch, body):
    server = HubServer({f"{REPO}/resolve/main/vocab.json": body, f"{REPO}/resolve/main/merges.txt": files[1]})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        for _ in range(2):  # and the next try is not stuck on what the first left behind
            with pytest.raises(hub.HubError, match="not GPT-2's vocabulary"):
                GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
            assert [p.name for p in hub.repo_cache(REPO, tmp_path).iterdir()] == [".lock"]
    finally:
        server.close()


def test_processes_fetching_at_once_take_turns(hub_server, tmp_path):
    import threading

    errors, got = [], []

    def fetch():
        try:
            got.append(GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path))
        except Exception as e:  # noqa: BLE001 - collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(got) == 3 and len(hub_server.requests) == 2  # downloaded once


def test_downloads_ask_for_the_bytes_as_stored(hub_server, tmp_path):
    GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    assert hub_server.encodings == ["identity", "identity"]  # a gzip body would not resume by byte ranges


def test_an_interrupted_download_resumes(hub_server, files, tmp_path):
    hub_server.cut_after[f"{REPO}/resolve/main/merges.txt"] = 100_000
    with pytest.raises(hub.HubError):
        GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    folder = hub.repo_cache(REPO, tmp_path)
    assert not (folder / "merges.txt").exists()  # never under its final name while incomplete
    assert 0 < (folder / "merges.txt.part").stat().st_size <= 100_000
    have = (folder / "merges.txt.part").stat().st_size
    GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    assert hub_server.requests[-1] == (f"{REPO}/resolve/main/merges.txt", f"bytes={have}-")
    assert (folder / "merges.txt").read_bytes() == files[1]
    assert not (folder / "merges.txt.part").exists()


def test_offline_names_the_folder_and_the_files(tmp_path, monkeypatch):
    server = HubServer({})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    server.close()  # nothing listens there now
    with pytest.raises(hub.HubError) as e:
        GPT2Tokenizer.from_pretrained("gpt2", cache_dir=tmp_path)
    message = str(e.value)
    assert "vocab.json and merges.txt" in message and str(hub.repo_cache(REPO, tmp_path)) in message


def test_sha256_is_checked(hub_server, files, tmp_path):
    url = hub.file_url(REPO, "vocab.json")
    with pytest.raises(hub.HubError, match="sha256"):
        hub.download(url, tmp_path / "vocab.json", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []
    import hashlib

    hub.download(url, tmp_path / "vocab.json", sha256=hashlib.sha256(files[0]).hexdigest(), progress=False)
    assert (tmp_path / "vocab.json").read_bytes() == files[0]


def test_endpoint_is_read_as_hugging_faces_client_reads_it(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert hub.file_url("gpt2", "config.json") == "https://huggingface.co/gpt2/resolve/main/config.json"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert hub.file_url("gpt2", "config.json") == "https://hf-mirror.example/gpt2/resolve/main/config.json"
