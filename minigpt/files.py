"""Where minigpt keeps what it downloads, and how it writes files that must never be half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DOWNLOAD_TIMEOUT_S = 30


class DataError(RuntimeError):
    """The text cannot be had: no file, no network, a damaged download, not UTF-8..."""


def default_cache_dir() -> Path:
    """``$MINIGPT_CACHE``, else ``$XDG_CACHE_HOME/minigpt``, else ``~/.cache/minigpt``."""
    if os.environ.get("MINIGPT_CACHE"):
        return Path(os.environ["MINIGPT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minigpt"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    A reader sees the old file or the whole new one, never half a file, even if the
    process dies mid-write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it 0600: give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class FolderBusy(RuntimeError):
    """Another process is writing into the folder."""


def _lock(f: Any, wait: bool) -> bool:
    """Take the operating system's exclusive lock on open file ``f``: it ends with its holder,
    however that ends (a process killed with SIGKILL leaves nothing stuck), and with ``f.close()``.
    ``wait``: until it is free; else False at once when another process holds it. Where there are
    no such locks (not POSIX), True, holding nothing."""
    try:
        import fcntl  # noqa: PLC0415 - POSIX
    except ImportError:
        return True
    try:
        fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by another process
        return False
    return True


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Inside the block, this process alone among those that ask for ``path``'s lock (the others
    wait their turn): for writers of a shared cache."""
    with open(path, "a") as f:
        _lock(f, wait=True)
        yield


def hold_folder(folder: Path) -> Any:
    """Hold ``folder`` for this process (its ``.lock`` file, locked: see _lock), or raise FolderBusy
    naming the process that holds it; ``.close()`` on the returned file gives it back."""
    folder.mkdir(parents=True, exist_ok=True)
    f = open(folder / ".lock", "a+")
    if not _lock(f, wait=False):
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise FolderBusy(f"{folder} is in use by another run ({holder}): one run at a time per --out_dir; "
                         "wait for it, or pass another --out_dir")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f


def remove_leftovers(folder: Path) -> None:
    """Delete the temporary files an interrupted :func:`atomic_write_bytes` left in ``folder``
    (call it while holding the folder: no other writer can be mid-write)."""
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
