"""`convlens serve` runs the production server (gunicorn, as the Procfile does): no development-server warning,
a websocket viewer is answered, and SIGTERM or SIGINT stops the server and its worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import socketio

from local import free_port


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(word) for word in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is left


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_runs_gunicorn_answers_a_websocket_and_stops_on_a_signal(models_dir, tmp_path, stop):
    port = free_port()
    log_path = tmp_path / "serve.log"
    environment = {**os.environ, "CONVLENS_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
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
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a hang guard: the worker imports torch and the plugins
        while True:
            assert server.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{url}/api/models", timeout=60).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        (worker,) = children(server.pid)  # one worker: jobs and rooms live in it
        client = socketio.Client()
        client.connect(url, transports=["websocket"])
        try:
            assert client.transport() == "websocket"
            assert client.call("subscribe", {"job": "none"}, timeout=60)["field"] == "job"
            server.send_signal(stop)  # with the viewer still connected
            assert server.wait(timeout=60) == 0
        finally:
            client.disconnect()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    log = log_path.read_text()
    assert f"convlens: serving on {url}" in log
    assert "Using worker: gthread" in log
    assert "development server" not in log and "WARNING" not in log, log
    assert not alive(worker)
