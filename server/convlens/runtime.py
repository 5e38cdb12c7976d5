"""Process-wide settings that make torch fast on small CPU machines."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


def tune_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS, and one heap for all threads.

    Batched torch forwards allocate and free large buffers each call; with glibc's
    defaults each becomes an mmap/munmap pair and page faults dominate (a batch-64
    forward measured 2.7 s → 0.54 s on the 2-core machines). Jobs run in their own threads, and a
    thread's own arena grows in 64 MiB heaps that a larger buffer does not fit, so one arena: Integrated
    Gradients in a job thread at batch 16 ran at 0.42 images/s with per-thread arenas, 0.66 with one.
    Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_ARENA_MAX=1``; call it
    before starting threads. Returns whether it applied.
    """
    if os.environ.get("CONVLENS_KEEP_MALLOC"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1
        ok = libc.mallopt(M_ARENA_MAX, 1) == 1 and ok
        ok = (
            libc.mallopt(M_TRIM_THRESHOLD, 100_000_000_000 if ctypes.sizeof(ctypes.c_long) == 8 else 2**30)
            == 1
            and ok
        )
    except (OSError, AttributeError):
        return False
    return ok


THREADS_ENV = "CONVLENS_THREADS"


def cpu_threads() -> int:
    """The threads a process's torch and ONNX Runtime pools get: ``CONVLENS_THREADS``, else one per CPU.

    Several processes computing on one machine (job workers) must share its cores: two workers' horses with a
    2-thread pool each on 2 cores ran a 0.5 s job in 11.7 s (OpenMP threads spinning against each other,
    ``bench/workers.py``); ``convlens cluster`` gives each worker its share."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value.isascii() and value.isdigit() and 0 < int(value) <= 1024:
        return int(value)
    return max(1, os.cpu_count() or 1)


def configure_threads() -> None:
    """One torch thread pool sized to the machine (:func:`cpu_threads`); ONNX Runtime sessions get as many."""
    import torch

    torch.set_num_threads(cpu_threads())


PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> None:
    """Have Linux send this process ``signum`` when its parent dies, even by SIGKILL (``prctl``; elsewhere a
    no-op). A worker's job process and ``convlens cluster``'s children end with what started them."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command's name (state, parent id, ...); ``None`` for no such
    process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
