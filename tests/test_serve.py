"""`convlens serve` runs the production server (gunicorn, as the Procfile does): no development-server warning,
a websocket viewer is answered, and SIGTERM or SIGINT stops the server and its worker."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import socketio

from local import start_serve


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
    served = start_serve(models_dir, tmp_path / "data")
    server, url, log_path = served.process, served.url, served.log_path
    try:
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
