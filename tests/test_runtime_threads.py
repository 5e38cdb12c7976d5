"""``CONVLENS_THREADS``: the threads of a process's torch and ONNX Runtime pools (workers sharing a machine's
cores each get their share)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from convlens.models.default import DEFAULT_MODEL_ID
from convlens.runtime import cpu_threads


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3),
        (" 1 ", 1),
        ("", None),
        ("0", None),
        ("-2", None),
        ("١", None),  # an Arabic-Indic digit: not a thread count
        ("9" * 40, None),
        ("two", None),
    ],
)
def test_the_setting_is_a_small_positive_ascii_integer_else_one_thread_per_cpu(monkeypatch, value, expected):
    monkeypatch.setenv("CONVLENS_THREADS", value)
    assert cpu_threads() == (expected or os.cpu_count())


def test_a_worker_process_pools_get_the_setting(models_dir):
    """In a fresh process (as a work horse is): torch's pool and an ONNX Runtime session's intra-op threads."""
    script = f"""
import onnxruntime, torch
from convlens.runtime import configure_threads
from convlens.models.onnx import runtime_session
configure_threads()
session = runtime_session({str(models_dir / DEFAULT_MODEL_ID)!r})
print(torch.get_num_threads(), session.get_session_options().intra_op_num_threads)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "CONVLENS_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "1"]
