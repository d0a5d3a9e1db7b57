"""Files from the Hugging Face Hub (GPT-2's tokenizer and weights), downloaded once into a cache.

    {HF_ENDPOINT}/{repo}/resolve/main/{filename}   ->   {cache}/hub/{repo with / as --}/{filename}

``HF_ENDPOINT`` is read as Hugging Face's own client reads it (default https://huggingface.co), so
a mirror, or a test's local server, stands in for the Hub. A download streams into
``filename.part`` beside its final place, shows its progress (size and speed) on stderr, resumes
from the ``.part`` file when interrupted (an HTTP Range request), and is checked before it is
renamed into place: only a verified file ever has the final name, so a cached file is a whole one.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from minigpt import files
from minigpt.files import DOWNLOAD_TIMEOUT_S, DataError, default_cache_dir

DEFAULT_ENDPOINT = "https://huggingface.co"
CHUNK = 1 << 16  # bytes read at a time: what an interrupted download keeps at most loses


class HubError(DataError):
    """A Hub file cannot be had: no network, a damaged download, an unexpected file."""


def endpoint() -> str:
    """The Hub's base URL: ``$HF_ENDPOINT`` without a trailing slash, else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def file_url(repo: str, filename: str, revision: str = "main") -> str:
    return f"{endpoint()}/{repo}/resolve/{revision}/{filename}"


def repo_cache(repo: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where ``repo``'s files are kept: ``{cache_dir}/hub/{owner--name}``."""
    return Path(cache_dir or default_cache_dir()) / "hub" / repo.replace("/", "--")


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


class _Progress:
    """``vocab.json: 41.9 MB / 548.1 MB (12.3 MB/s)``, rewritten in place at most twice a second."""

    def __init__(self, name: str, done: int, total: int | None, stream=None) -> None:
        self.name, self.done, self.total = name, done, total
        self.stream = stream if stream is not None else sys.stderr
        self.start, self.start_bytes, self.shown = time.monotonic(), done, 0.0

    def update(self, n: int, final: bool = False) -> None:
        self.done += n
        now = time.monotonic()
        if not final and now - self.shown < 0.5:
            return
        self.shown = now
        speed = (self.done - self.start_bytes) / max(now - self.start, 1e-6)
        of = f" / {_fmt_bytes(self.total)}" if self.total else ""
        self.stream.write(f"\rdownloading {self.name}: {_fmt_bytes(self.done)}{of} ({_fmt_bytes(speed)}/s)"
                          + ("\n" if final else ""))
        self.stream.flush()


def download(url: str, dest: Path, *, sha256: str | None = None, check: Callable[[Path], None] | None = None,
             timeout: float = DOWNLOAD_TIMEOUT_S, progress: bool = True) -> Path:
    """Stream ``url`` into ``dest`` (resuming ``dest.part`` if an earlier try left one), then check
    it (``sha256``, and ``check(path)``, which raises on a bad file) and rename it into place.

    A failed check deletes the download: the next try starts over. Raises ``HubError``.
    """
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    # the bytes as stored: a compressed body would not match Content-Length, nor resume by Range
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code == 416:  # the .part file is already whole (or longer than the file)
                pass
            else:
                response.raise_for_status()
                if have and response.status_code != 206:  # the server ignored the Range: start over
                    have = 0
                total = response.headers.get("Content-Length")
                total = int(total) + have if total and total.isdigit() else None
                bar = _Progress(dest.name, have, total) if progress else None
                with open(part, "ab" if have else "wb") as f:
                    for block in response.iter_content(CHUNK):
                        f.write(block)
                        if bar:
                            bar.update(len(block))
                if bar:
                    bar.update(0, final=True)
                if total is not None and part.stat().st_size != total:
                    raise HubError(f"the download of {url} ended early ({part.stat().st_size} of {total} bytes); "
                                   "run again to resume it")
    except requests.RequestException as e:
        raise HubError(f"could not download {url}: {e}") from e
    try:
        if sha256 is not None:
            got = _sha256(part)
            if got != sha256:
                raise HubError(f"the download of {url} is damaged or not the expected file: sha256 {got}, "
                               f"expected {sha256}; nothing was kept")
        if check is not None:
            check(part)
    except Exception as e:  # noqa: BLE001 - whatever the check finds, the file is not kept
        part.unlink(missing_ok=True)
        raise e if isinstance(e, HubError) else HubError(f"the download of {url} is not a valid {dest.name}: {e}; "
                                                         "nothing was kept") from e
    os.replace(part, dest)
    return dest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def fetch(repo: str, filenames: list[str], cache_dir: str | os.PathLike | None = None, *,
          checks: dict[str, Callable[[Path], None]] | None = None, sha256: dict[str, str] | None = None) -> Path:
    """The folder holding ``repo``'s ``filenames``, downloading those not yet in the cache.

    Processes that fetch the same folder at once (the ranks of an ``mpiexec`` run) take turns: the
    first downloads, the others then find the files. When a download fails the error names the
    folder and the files to put there by hand.
    """
    folder = repo_cache(repo, cache_dir)
    checks, sha256 = checks or {}, sha256 or {}
    if all((folder / name).is_file() for name in filenames):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with files.exclusive(folder / ".lock"):
        for name in filenames:
            if (folder / name).is_file():
                continue
            try:
                download(file_url(repo, name), folder / name, sha256=sha256.get(name), check=checks.get(name))
            except HubError as e:
                raise HubError(f"{e}. Where the Hub cannot be reached, put {' and '.join(filenames)} (from the "
                               f"Hub's {repo}) into {folder}, or pass a folder that holds them") from e
    return folder
