"""Fewer torch threads for the calling thread only, where ``torch.set_num_threads`` would change every job's.

``torch.set_num_threads`` stores a process-wide count that every thread first touching torch afterwards takes
(other jobs' threads too), besides setting the caller's OpenMP and MKL counts. Both of those are per thread:
OpenMP's ``omp_set_num_threads`` sets the calling thread's count and MKL's ``MKL_Set_Num_Threads_Local`` its
own, and torch's ops read them (``at::get_num_threads`` is ``omp_get_max_threads``; MKL's GEMMs read MKL's). So a
job that trains a tiny net can run its ops on one thread, and the other jobs keep theirs.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@functools.cache
def _libraries() -> tuple[ctypes.CDLL | None, ctypes.CDLL | None]:
    """Torch's own OpenMP runtime and the library MKL is linked into, already loaded by ``import torch``; ``None``
    for one a build does not have (then its count is left as it is)."""
    import torch

    folder = Path(torch.__file__).parent / "lib"
    found: list[ctypes.CDLL | None] = []
    for pattern, symbol in (
        ("libgomp*.so*", "omp_set_num_threads"),
        ("libtorch_cpu.so", "MKL_Set_Num_Threads_Local"),
    ):
        library = None
        for path in sorted(folder.glob(pattern)):
            try:
                candidate = ctypes.CDLL(str(path))
            except OSError:
                continue
            if hasattr(candidate, symbol):
                library = candidate
                break
        found.append(library)
    return found[0], found[1]


@contextmanager
def threads_here(count: int) -> Iterator[None]:
    """Run the calling thread's torch ops on at most ``count`` threads inside the block; restored after it."""
    import torch

    # torch sets a thread's counts from its process-wide one the first time the thread runs a parallel op; done
    # first here, so that it does not undo this later.
    previous = torch.get_num_threads()
    gomp, mkl = _libraries()
    previous_mkl = None
    if gomp is not None:
        gomp.omp_set_num_threads(ctypes.c_int(count))
    if mkl is not None:
        # MKL's C entry point (its lower- and upper-case names take a pointer, for Fortran); it answers the
        # thread's former count, 0 for none of its own.
        previous_mkl = mkl.MKL_Set_Num_Threads_Local(ctypes.c_int(count))
    try:
        yield
    finally:
        if gomp is not None:
            gomp.omp_set_num_threads(ctypes.c_int(previous))
        if mkl is not None:
            mkl.MKL_Set_Num_Threads_Local(ctypes.c_int(previous_mkl or 0))
