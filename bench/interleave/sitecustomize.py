"""Loaded by the convlens server that ``bench/interleaved_overhead.py`` starts (it puts this folder on the
server's ``PYTHONPATH``): interleaves the bare loop's steps with the job's, see that script."""

import os

if os.environ.get("CONVLENS_BENCH_INTERLEAVE_DIR"):
    from interleaved_overhead import BLOCK_ENV, DIR_ENV, install

    install(os.environ[DIR_ENV], max(1, int(os.environ.get(BLOCK_ENV, "8"))))
