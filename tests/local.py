"""Plain helpers the test modules import (``conftest`` is ambiguous: tests/ and tests/browser/ each have one)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
FORWARD_ONLY = "forward-only"
"""The id under which the ``forward_only_model`` fixture offers the tiny model without gradients."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


JOB_ENDS_S = 240
"""How long a test waits for a short job to end on this shared 2-core machine."""


def run_to_end(server: str, body: dict, ends_s: float = JOB_ENDS_S) -> dict:
    """POST the job ``body`` to the server at ``server``, poll it until it ends and assert it ended done → its
    record."""
    job = requests.post(f"{server}/api/jobs", json=body, timeout=60).json()
    deadline = time.monotonic() + ends_s
    while (record := requests.get(f"{server}/api/jobs/{job['id']}", timeout=60).json())["state"] not in (
        "done",
        "failed",
        "stopped",
    ):
        assert time.monotonic() < deadline, f"job {job['id']} did not end in {ends_s} s"
        time.sleep(0.2)
    assert record["state"] == "done", record
    return record


@dataclass
class Served:
    """A ``convlens serve`` process started by :func:`start_serve`; its output is in ``log_path``."""

    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()


def start_serve(
    models_dir: Path, data_dir: Path, env: dict[str, str] | None = None, hang_s: float = 180
) -> Served:
    """``python -m convlens serve`` on a free port over ``data_dir``, returned once it answers HTTP (any status:
    one with a token answers 401). Fails the test, with the server's output, if it exits or never answers."""
    port = free_port()
    environment = {**os.environ, "CONVLENS_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1", **(env or {})}
    command = [
        sys.executable,
        "-m",
        "convlens",
        "--models-dir",
        str(models_dir),
        "serve",
        "--port",
        str(port),
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    served = Served(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + hang_s  # a hang guard: the worker imports torch and the plugins
    try:
        while True:
            assert process.poll() is None, f"convlens serve exited with {process.returncode}:\n{served.log()}"
            try:
                requests.get(f"{served.url}/api/models", timeout=30)
                return served
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or the worker loading
                pass
            assert time.monotonic() < deadline, (
                f"convlens serve did not answer in {hang_s} s:\n{served.log()}"
            )
            time.sleep(0.3)
    except BaseException:
        process.kill()
        process.wait()
        raise
