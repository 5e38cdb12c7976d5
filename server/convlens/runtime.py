"""Process-wide settings that make torch fast on small CPU machines."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS.

    Batched torch forwards allocate and free large buffers each call; with glibc's
    defaults each becomes an mmap/munmap pair and page faults dominate (a batch-64
    forward measured 2.7 s → 0.54 s on the 2-core machines). Same effect as
    ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000``. Returns whether it applied.
    """
    if os.environ.get("CONVLENS_KEEP_MALLOC"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1
        ok = (
            libc.mallopt(M_TRIM_THRESHOLD, 100_000_000_000 if ctypes.sizeof(ctypes.c_long) == 8 else 2**30)
            == 1
            and ok
        )
    except (OSError, AttributeError):
        return False
    return ok


def configure_threads() -> None:
    """One torch thread pool sized to the machine; ONNX Runtime sessions are sized the same way."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
