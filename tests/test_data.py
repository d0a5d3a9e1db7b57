"""Data: the tokenizer facts of the notebook, the split, batches, and the download (against a local server)."""

import gzip
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

from minigpt import data
from minigpt.data import CharTokenizer, DataError, get_batch, load_text, train_val_split


def test_tokenizer_facts_from_the_notebook(shakespeare_text):
    assert len(shakespeare_text) == 1_115_394
    tok = CharTokenizer.from_text(shakespeare_text)
    assert tok.vocab_size == 65
    assert tok.chars == "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    ids = tok.encode("Hello, world!")
    assert ids.dtype == np.int64
    assert ids.tolist() == [20, 43, 50, 50, 53, 6, 1, 61, 53, 56, 50, 42, 2]
    assert tok.decode(ids) == "Hello, world!"
    encoded = tok.encode(shakespeare_text)
    assert encoded[:10].tolist() == [18, 47, 56, 57, 58, 1, 15, 47, 58, 47]
    train, val = train_val_split(encoded)
    assert len(train) == 1_003_854 and len(val) == 1_115_394 - 1_003_854
    np.testing.assert_array_equal(np.concatenate([train, val]), encoded)


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    assert tok.decode(tok.encode("low")) == "low"
    with pytest.raises(ValueError, match=r"'Z', 'q'"):
        tok.encode("qZ")
    with pytest.raises(ValueError):
        tok.decode([99])


def test_get_batch_shapes_and_shift():
    ids = np.arange(100)
    x, y = get_batch(ids, 4, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)  # consecutive ids: y is x shifted by one
    np.testing.assert_array_equal(x[:, 1:], x[:, :-1] + 1)
    assert x.min() >= 0 and y.max() <= 99
    x2, _ = get_batch(ids, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)  # same rng state, same batch
    with pytest.raises(ValueError, match="too few"):
        get_batch(np.arange(8), 2, 8, np.random.default_rng(0))


def test_get_batch_reaches_the_last_chunk():
    ids = np.arange(10)
    starts = {int(get_batch(ids, 1, 8, np.random.default_rng(s))[0][0, 0]) for s in range(200)}
    assert starts == {0, 1}  # len - block_size possible starts, the last one included


def test_read_local_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("some text", encoding="utf-8")
    assert load_text(f) == "some text"
    with pytest.raises(DataError, match="not found"):
        load_text(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(bad)


class _Server:
    """A local HTTP server that serves ``body`` (or an error status) and counts requests."""

    def __init__(self, body=b"", status=200):
        self.body, self.status, self.requests = body, status, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/input.txt"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    servers = []

    def make(body=b"", status=200):
        servers.append(_Server(body, status))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_download_checks_sha256_caches_and_reuses(server, tmp_path, shakespeare_path):
    body = Path(shakespeare_path).read_bytes()
    assert hashlib.sha256(body).hexdigest() == data.TINY_SHAKESPEARE_SHA256
    srv = server(body)
    text = load_text(url=srv.url, cache_dir=tmp_path, sha256=data.TINY_SHAKESPEARE_SHA256)
    assert len(text) == 1_115_394 and srv.requests == 1
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].read_bytes() == body  # one file, no temp left behind
    assert load_text(url=srv.url, cache_dir=tmp_path, sha256=data.TINY_SHAKESPEARE_SHA256) == text
    assert srv.requests == 1  # the second call read the cache


def test_damaged_download_is_refused_and_not_cached(server, tmp_path):
    srv = server(b"First Citizen:\nBefore we proceed any further, hear me spea")  # truncated
    with pytest.raises(DataError, match="damaged or not the expected file"):
        load_text(url=srv.url, cache_dir=tmp_path, sha256=data.TINY_SHAKESPEARE_SHA256)
    assert list(tmp_path.iterdir()) == []


def test_http_error_says_how_to_pass_the_data(server, tmp_path):
    srv = server(b"not found", status=404)
    with pytest.raises(DataError, match="--data PATH or the MINIGPT_DATA"):
        load_text(url=srv.url, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        load_text(url="http://127.0.0.1:9/input.txt", cache_dir=tmp_path)


def test_damaged_cache_is_fetched_again(server, tmp_path):
    body = "good text\n".encode()
    srv = server(body)
    sha = hashlib.sha256(body).hexdigest()
    load_text(url=srv.url, cache_dir=tmp_path, sha256=sha)
    cached = next(tmp_path.iterdir())
    cached.write_bytes(b"half")
    assert load_text(url=srv.url, cache_dir=tmp_path, sha256=sha) == "good text\n"
    assert srv.requests == 2


def test_the_default_url_is_the_char_rnn_file():
    assert data.TINY_SHAKESPEARE_URL.endswith("karpathy/char-rnn/master/data/tinyshakespeare/input.txt")
    assert data._KNOWN_SHA256[data.TINY_SHAKESPEARE_URL] == data.TINY_SHAKESPEARE_SHA256


# ----------------------------------------------------------------------------- the packaged text
def test_packaged_text_is_tiny_shakespeare_with_no_network(monkeypatch, shakespeare_text):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("the packaged text must not touch the network")

    monkeypatch.setattr(requests, "get", no_network)
    text = load_text()
    assert len(text) == 1_115_394
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == data.TINY_SHAKESPEARE_SHA256
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert data.load_source() == text  # no --data, no $MINIGPT_DATA: the same text


def _package_with(tmp_path, monkeypatch, gz_bytes):
    """Make data.packaged_text read ``gz_bytes`` as its asset (None: no asset file at all)."""
    assets = tmp_path / "pkg" / "assets"
    assets.mkdir(parents=True)
    if gz_bytes is not None:
        (assets / data.PACKAGED_TEXT).write_bytes(gz_bytes)

    class FakeResources:
        @staticmethod
        def files(package):
            assert package == "minigpt"
            return tmp_path / "pkg"

    monkeypatch.setattr(data, "resources", FakeResources)


def test_the_real_asset_passes_the_stand_in_check(tmp_path, monkeypatch, shakespeare_text):
    # the stand-in of the tests below reads what it is given: the true text goes through whole
    _package_with(tmp_path, monkeypatch, gzip.compress(shakespeare_text.encode("utf-8")))
    assert load_text() == shakespeare_text


@pytest.mark.parametrize("damage, message", [
    ("one character changed", "is damaged: sha256"),
    ("truncated", "cannot be read"),
    ("not gzip", "cannot be read"),
    ("missing", "cannot be read"),
])
def test_a_damaged_packaged_copy_is_a_clear_error(damage, message, tmp_path, monkeypatch, shakespeare_text):
    body = shakespeare_text.encode("utf-8")
    gz = {"one character changed": gzip.compress(body.replace(b"First Citizen", b"First Citizem", 1)),
          "truncated": gzip.compress(body)[:200_000],
          "not gzip": body[:5000],
          "missing": None}[damage]
    _package_with(tmp_path, monkeypatch, gz)
    with pytest.raises(DataError, match=message):
        load_text()


def test_load_source_takes_a_path_a_url_or_the_environment(server, tmp_path, monkeypatch):
    f = tmp_path / "mine.txt"
    f.write_text("my own text\n", encoding="utf-8")
    srv = server(b"text from a url\n")
    monkeypatch.setenv("MINIGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIGPT_DATA", raising=False)
    assert data.load_source(str(f)) == "my own text\n"
    assert data.load_source(srv.url) == "text from a url\n"
    assert data.load_source(srv.url) == "text from a url\n" and srv.requests == 1  # cached
    monkeypatch.setenv("MINIGPT_DATA", str(f))
    assert data.load_source() == "my own text\n"
    assert data.load_source(srv.url) == "text from a url\n"  # the flag wins over the environment
    monkeypatch.setenv("MINIGPT_DATA", srv.url)
    assert data.load_source() == "text from a url\n"
    assert data.is_url("https://example.org/a.txt") and not data.is_url("data/https.txt")
