"""Data: Tiny Shakespeare, the 90/10 split and random (batch, block) chunks.

This follows the lecture notebook minigpt grew from:
    text  --CharTokenizer-->  ids (int64, one per character)
    ids   --train_val_split-->  first 90% to train on, last 10% to validate on
    ids   --get_batch-->  x, y (batch_size, block_size): y is x shifted by one, so at
                          every position t the target is the character that follows x[:t+1]
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Any

import numpy

from minigpt import backend
# the download and cache basics live in files.py (the Hub downloads use them too); here as before
from minigpt.files import DOWNLOAD_TIMEOUT_S, DataError, atomic_write_bytes, default_cache_dir  # noqa: F401
from minigpt.tokenizers import CharTokenizer  # noqa: F401 - it lives with the other tokenizers

# where the packaged copy came from (the char-rnn repository's input.txt)
TINY_SHAKESPEARE_URL = ("https://raw.githubusercontent.com/karpathy/char-rnn/master/"
                        "data/tinyshakespeare/input.txt")
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
_KNOWN_SHA256 = {TINY_SHAKESPEARE_URL: TINY_SHAKESPEARE_SHA256}
PACKAGED_TEXT = "tinyshakespeare.txt.gz"  # in minigpt/assets: the text above, gzip -9 (434 KB)
def _read_text(path: Path) -> str:
    """The file's text as UTF-8, a byte-order mark at its start dropped (it is no character of the
    text). Only a regular file is read: a device (/dev/zero never ends) or a pipe (it may never
    send) is refused before any byte is read."""
    if path.exists() and not path.is_file():
        raise DataError(f"{path} is not a regular file (a folder, a device or a pipe): pass a text file")
    try:
        return path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError as e:
        raise DataError(f"data file not found: {path}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"data file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from e


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> None:
    """Download ``url`` into ``dest`` atomically; with ``sha256``, refuse (and keep nothing of)
    a download whose hash differs."""
    import requests  # noqa: PLC0415 - only needed when downloading

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as e:
        raise DataError(f"could not download {url}: {e}. Without network, pass a text file "
                        "with --data PATH or the MINIGPT_DATA environment variable, or leave both unset "
                        "to train on the packaged Tiny Shakespeare") from e
    body = response.content
    if sha256 is not None:
        got = hashlib.sha256(body).hexdigest()
        if got != sha256:
            raise DataError(f"download from {url} is damaged or not the expected file: "
                            f"sha256 {got}, expected {sha256}; nothing was cached")
    try:  # without a known hash, a text at least: a damaged download is never cached
        body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"download from {url} is not UTF-8 text ({e.reason} at byte {e.start}); nothing was "
                        "cached") from e
    atomic_write_bytes(dest, body)


def packaged_text() -> str:
    """Tiny Shakespeare from the copy shipped inside minigpt (``minigpt/assets``, gzip -9), no network.

    The decompressed bytes must have Tiny Shakespeare's sha256: a damaged or replaced copy is a
    ``DataError``, never silently trained on.
    """
    resource = resources.files("minigpt") / "assets" / PACKAGED_TEXT
    try:
        body = gzip.decompress(resource.read_bytes())
    except (OSError, EOFError, zlib.error) as e:  # missing file, not gzip, truncated stream
        raise DataError(f"the packaged Tiny Shakespeare ({resource}) cannot be read: {e}; "
                        "reinstall minigpt, or pass a text file with --data PATH") from e
    got = hashlib.sha256(body).hexdigest()
    if got != TINY_SHAKESPEARE_SHA256:
        raise DataError(f"the packaged Tiny Shakespeare ({resource}) is damaged: sha256 {got}, expected "
                        f"{TINY_SHAKESPEARE_SHA256}; reinstall minigpt, or pass a text file with --data PATH")
    return body.decode("utf-8")


def load_text(path: str | os.PathLike | None = None, url: str | None = None,
              cache_dir: str | os.PathLike | None = None, sha256: str | None = None) -> str:
    """The training text, from the first of these that is given:

    - ``path``: a text file, read as UTF-8;
    - ``url``: downloaded with ``requests`` once into ``cache_dir`` (default
      :func:`default_cache_dir`) and read from there afterwards. Downloads are checked against
      ``sha256`` (by default the known hash of Tiny Shakespeare for its URL, none for other
      URLs) and written atomically: a failed or damaged download is neither used nor cached;
    - neither: Tiny Shakespeare from the copy inside the package (:func:`packaged_text`).

    Only a ``url`` touches the network. Raises ``DataError`` with a message saying what to do.
    """
    if path is not None:
        return _read_text(Path(path))
    if url is None:
        return packaged_text()
    sha256 = sha256 if sha256 is not None else _KNOWN_SHA256.get(url)
    url_tag = hashlib.sha256(url.encode()).hexdigest()[:10]
    cached = Path(cache_dir or default_cache_dir()) / f"{url_tag}-{Path(url).name or 'data.txt'}"
    if cached.exists():
        if sha256 is None or hashlib.sha256(cached.read_bytes()).hexdigest() == sha256:
            return _read_text(cached)
        cached.unlink()  # damaged cache: fetch again
    download(url, cached, sha256)
    return _read_text(cached)


def is_url(source: str) -> bool:
    """True for an http(s) address, which :func:`load_source` downloads instead of opening."""
    return source.startswith(("http://", "https://"))


def load_source(source: str | None = None) -> str:
    """The text a command line asks for: ``source`` (a file path or an http(s) URL), else the
    ``MINIGPT_DATA`` environment variable (the same), else the packaged Tiny Shakespeare."""
    source = source or os.environ.get("MINIGPT_DATA") or None
    if source is None:
        return load_text()
    return load_text(url=source) if is_url(source) else load_text(path=source)


def train_val_split(ids: Any, train_frac: float = 0.9) -> tuple[Any, Any]:
    """The first ``train_frac`` of ``ids`` to train on and the rest to validate on (no shuffle:
    the validation text is text the model never saw)."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must lie in (0, 1), got {train_frac}")
    n = int(train_frac * len(ids))
    return ids[:n], ids[n:]


def get_batch(ids: Any, batch_size: int, block_size: int,
              rng: numpy.random.Generator) -> tuple[Any, Any]:
    """``batch_size`` random chunks of ``block_size`` tokens: x[b] = ids[i:i+block], y[b] = ids[i+1:i+block+1].

    Returns two int64 arrays (batch_size, block_size) on the device of ``ids`` (ids on a GPU:
    the offsets, drawn on the host, are copied over once). ``rng`` is a numpy Generator.
    """
    ids = backend.get_array_module(ids).asarray(ids)
    if len(ids) <= block_size:
        raise ValueError(f"the text has {len(ids)} tokens, too few for block_size {block_size} "
                         f"(it needs at least {block_size + 1})")
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)  # (B,)
    offsets = backend.move(starts[:, None] + numpy.arange(block_size), backend.device_of(ids))  # (B, T)
    return ids[offsets].astype("int64"), ids[offsets + 1].astype("int64")
