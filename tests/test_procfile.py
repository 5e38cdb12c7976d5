"""The Procfile's `web:` line, run as a platform runs it, serves the API and streams a job over a websocket."""

from __future__ import annotations

import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import socketio
from PIL import Image

from convlens.models.default import DEFAULT_MODEL_ID
from local import REPO, free_port

ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def procfile_web_command() -> str:
    lines = (REPO / "Procfile").read_text().splitlines()
    (command,) = [line.removeprefix("web:").strip() for line in lines if line.startswith("web:")]
    return command


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it, parents before children, from the parent ids in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue  # it ended meanwhile
    tree = [root]
    for pid in tree:
        tree.extend(child for child, parent in parents.items() if parent == pid)
    return tree


def program_names(pid: int) -> set[str]:
    """The file names in a process's command line (``python``, ``gunicorn``): not the words of ``sh -c``'s line."""
    return {Path(os.fsdecode(word)).name for word in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")}


def environment_of(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(pair.decode().split("=", 1) for pair in pairs if b"=" in pair)


@pytest.fixture
def procfile_server(models_dir, tmp_path):
    """The `web:` line run through a shell with PORT and HOST set, as a platform does: (base URL, shell pid)."""
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    environment |= {
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
        "CONVLENS_MODELS_DIRS": str(models_dir),
        "CONVLENS_DATA_DIR": str(tmp_path / "data"),
    }
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "w") as log:
        shell = subprocess.Popen(
            ["sh", "-c", procfile_web_command()],
            env=environment,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a hang guard: the worker imports torch and the app
        while True:
            assert shell.poll() is None, f"the web: line exited:\n{log_path.read_text()}"
            try:
                if requests.get(f"{url}/api/models", timeout=30).ok:
                    break
            except (requests.ConnectionError, requests.Timeout):  # not listening yet, or the worker loading
                pass
            assert time.monotonic() < deadline, f"no answer within 180 s:\n{log_path.read_text()}"
            time.sleep(0.3)
        yield url, shell.pid
    finally:
        # gunicorn's arbiter stops its worker and exits, then the shell does; the group is the fallback.
        arbiter = [pid for pid in process_tree(shell.pid) if "gunicorn" in program_names(pid)][:1]
        os.kill(arbiter[0] if arbiter else shell.pid, signal.SIGTERM)
        try:
            shell.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(timeout=60)


def test_the_procfile_binds_the_host_and_port_it_is_given():
    command = procfile_web_command()
    assert "--bind ${HOST:-0.0.0.0}:${PORT:-5000}" in command
    assert "--config python:convlens.serving" in command  # the settings `convlens serve` runs with too
    from convlens import serving

    assert serving.workers == 1  # jobs and rooms live in one process


def test_the_procfiles_gunicorn_streams_a_job_over_a_websocket_with_its_malloc_settings(procfile_server):
    url, shell_pid = procfile_server
    settings = {}
    for word in shlex.split(procfile_web_command()):
        match = ASSIGNMENT.match(word)
        if not match:
            break
        settings[match[1]] = match[2]
    assert {"MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} <= set(settings)
    gunicorns = [pid for pid in process_tree(shell_pid) if "gunicorn" in program_names(pid)]
    assert len(gunicorns) == 2  # the arbiter and its one worker
    for pid in gunicorns:
        environment = environment_of(pid)
        assert {name: environment.get(name) for name in settings} == settings

    frames: list[dict] = []
    finished = threading.Event()
    ended: list[str] = []
    client = socketio.Client()

    @client.on("frame")
    def on_frame(data: dict) -> None:
        frames.append(data)
        client.emit("frame_ack", {"job": data["job"], "seq": data["seq"]})

    for name in ("done", "failed", "stopped"):
        client.on(name, lambda data, name=name: (ended.append(name), finished.set()))

    job = requests.post(
        f"{url}/api/jobs",
        json={"method": "deepdream", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {"steps": 8}},
        timeout=60,
    )
    assert job.status_code == 202, job.text
    client.connect(url, transports=["websocket"])
    try:
        assert client.transport() == "websocket"
        assert client.call("subscribe", {"job": job.json()["id"]}, timeout=60)["ok"]
        assert finished.wait(300), "no done within 300 s"
    finally:
        client.disconnect()
    assert ended == ["done"]
    assert frames and all(frame["mime"] == "image/jpeg" for frame in frames)
    last = frames[-1]
    picture = Image.open(io.BytesIO(last["data"]))
    assert picture.format == "JPEG" and picture.size == (last["width"], last["height"])
    state = requests.get(f"{url}/api/jobs/{job.json()['id']}", timeout=30).json()
    assert state["state"] == "done" and state["frames"] >= len(frames)


@pytest.mark.parametrize(
    ("settings", "refused"),
    [({}, True), ({"CONVLENS_ALLOW_NO_TOKEN": "1"}, False), ({"CONVLENS_TOKEN": "lab-secret"}, False)],
)
def test_the_procfile_on_an_address_other_machines_reach_needs_a_token_as_convlens_serve_does(
    models_dir, tmp_path, settings, refused
):
    """HOST=0.0.0.0 without CONVLENS_TOKEN: gunicorn exits 2 before it binds, naming the fix; with a token, or
    CONVLENS_ALLOW_NO_TOKEN=1, it starts (stopped as soon as it says so)."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MALLOC_", "CONVLENS_TOKEN", "CONVLENS_ALLOW_NO_TOKEN"))
    }
    environment |= {
        "PORT": str(free_port()),
        "HOST": "0.0.0.0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environment.get('PATH', '')}",
        "CONVLENS_MODELS_DIRS": str(models_dir),
        "CONVLENS_DATA_DIR": str(tmp_path / "data"),
        **settings,
    }
    shell = subprocess.Popen(
        ["sh", "-c", procfile_web_command()],
        env=environment,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said = []
    try:
        for line in shell.stdout:
            said.append(line)
            if "convlens: access:" in line or "convlens: error:" in line:
                break
        if refused:
            said.append(shell.stdout.read())
            shell.wait(timeout=60)  # it ends by itself
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)
        shell.wait(timeout=60)
    output = "".join(said)
    if refused:
        assert shell.returncode == 2, output
        assert "convlens: error: token:" in output and "CONVLENS_TOKEN" in output
    else:
        assert "convlens: access:" in output and "convlens: error" not in output, output
