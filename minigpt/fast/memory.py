"""Host memory: keep freed blocks in malloc's heap for the next training step.

A training step allocates and frees the same few megabytes of activations every iteration.
glibc's malloc hands large freed blocks back to the kernel (munmap, or trimming the heap's top),
so the next step's arrays are fresh pages that fault in one by one, zeroed by the kernel: hundreds
of page faults per step of nanoGPT's CPU recipe. Kept in the heap instead, the blocks are simply
reused, without the faults or the zeroing. The reference is simply malloc's default behaviour:
nothing to call.
"""

from __future__ import annotations

import ctypes

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's <malloc.h>
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper limit on 64-bit: bigger blocks are always mmapped


def keep_freed_memory(trim_threshold_mb: int = 512) -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse rather than return them to the OS.

    Blocks up to 32 MiB come from the heap (not from their own mmap), and the heap's free top is
    returned to the OS only beyond ``trim_threshold_mb``. This changes no result, only where
    memory comes from; a training loop calls it once. Returns False, changing nothing, where the
    C library is not glibc (macOS, Windows, musl)."""
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library by that name, or no mallopt in it
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb << 20) == 1 and ok
