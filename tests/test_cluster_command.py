"""``convlens cluster``: the real command starts redis-server, two web processes, a worker and nginx; real
Socket.IO clients (long-polling, then websocket) watch jobs through nginx's one address; a web process killed
with SIGKILL is started again; SIGTERM leaves no process behind. Also the nginx config it writes, and bad
arguments."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from cluster_fixtures import ALICE, SHORT, Viewer
from convlens.cluster import NGINX_TEMPLATE, find_nginx, nginx_config, process_tree
from local import REPO, free_port

HANG_S = 400
"""A hang guard for the cluster to start or a process to come back: never reached when things work."""


@dataclass
class Running:
    """The ``convlens cluster`` process, its address and its output."""

    process: subprocess.Popen
    url: str
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text()

    def wait_for(self, pattern: str, after: int = 0) -> re.Match:
        """The first match of ``pattern`` in the output from character ``after`` on, once it is written."""
        deadline = time.monotonic() + HANG_S
        while not (found := re.compile(pattern).search(self.output(), after)):
            assert self.process.poll() is None, f"the cluster exited:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in {HANG_S} s:\n{self.output()}"
            time.sleep(0.2)
        return found

    def pid_of(self, name: str) -> int:
        return int(self.wait_for(rf"started {name} (?:again )?\(pid (\d+)\)").group(1))

    def port_of(self, name: str) -> int:
        return int(self.wait_for(rf"started {name} \(pid \d+\) on 127\.0\.0\.1:(\d+)").group(1))


def cluster_command(models_dir: Path, *arguments: str) -> list[str]:
    return [sys.executable, "-m", "convlens", "--models-dir", str(models_dir), "cluster", *arguments]


def cluster_environment(data: Path) -> dict[str, str]:
    environment = {**os.environ, "CONVLENS_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    for name in ("CONVLENS_REDIS_URL", "CONVLENS_JOB_QUEUE", "CONVLENS_TOKEN"):
        environment.pop(name, None)
    return environment


@pytest.fixture(scope="module")
def cluster(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``convlens cluster --web 2 --workers 1`` on a free port, once it says it serves."""
    data = tmp_path_factory.mktemp("cluster-command")
    port = free_port()
    output_path = data / "cluster.out"
    with open(output_path, "w") as output:
        process = subprocess.Popen(
            cluster_command(models_dir, "--web", "2", "--workers", "1", "--port", str(port)),
            env=cluster_environment(data),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    running = Running(process, f"http://127.0.0.1:{port}", output_path)
    try:
        running.wait_for(r"serving on http://127\.0\.0\.1:\d+")
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()


def test_the_nginx_config_balances_the_web_ports_stickily_with_websocket_upgrades(tmp_path):
    text = nginx_config(NGINX_TEMPLATE.read_text(), "127.0.0.1:5123", [40001, 40002], tmp_path)
    upstream = text[text.index("upstream convlens {") : text.index("server {")]
    assert re.search(r"^\s*ip_hash;", upstream, re.MULTILINE), upstream
    assert re.findall(r"server (127\.0\.0\.1:\d+) max_fails=0;", upstream) == [
        "127.0.0.1:40001",
        "127.0.0.1:40002",
    ]
    assert "listen 127.0.0.1:5123;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    assert "proxy_buffering off;" in text
    assert "{{" not in text and f"pid {tmp_path}/nginx.pid;" in text
    # nginx itself accepts it.
    (tmp_path / "nginx.conf").write_text(text)
    checked = subprocess.run(
        [find_nginx(), "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(
    ("arguments", "field"),
    [(["--web", "0"], "web"), (["--workers", "17"], "workers"), (["--web", "-1"], "web"), ([], "port")],
)
def test_bad_arguments_are_a_cli_error_naming_them(models_dir, tmp_path, arguments, field):
    with socket.socket() as taken:  # the port the command is given is in use, for the last case
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        answer = subprocess.run(
            cluster_command(models_dir, "--port", str(port), *arguments),
            env=cluster_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert answer.returncode == 2, answer.stderr
    assert f"convlens: error: {field}: " in answer.stderr, answer.stderr
    assert "started" not in answer.stderr


def watch_through(cluster: Running, transports: tuple[str, ...]) -> None:
    answer = requests.post(f"{cluster.url}/api/jobs", json=SHORT, cookies=ALICE, timeout=60)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    viewer = Viewer(cluster.url, job_id, transports=transports)
    try:
        assert viewer.wait_end() == "done"
        assert viewer.frames(), [name for name, _ in viewer.events]
        assert viewer.client.transport() == transports[-1]
    finally:
        viewer.close()
    job = requests.get(f"{cluster.url}/api/jobs/{job_id}", cookies=ALICE, timeout=60).json()
    assert job["state"] == "done"
    record = redis.Redis(port=cluster.port_of("redis")).hget(f"convlens:job:{job_id}", "logs")
    logs = [line["message"] for line in json.loads(record or "[]")]
    assert any(line.startswith("run by worker ") for line in logs), logs


def test_a_long_polling_client_watches_through_nginx_a_job_it_submitted_there(cluster):
    # Each long-polling request is a new HTTP request: without sticky sessions half reach the web process
    # that never opened the Socket.IO session, and the client is refused.
    watch_through(cluster, ("polling",))


def test_a_websocket_client_watches_through_nginx_too(cluster):
    watch_through(cluster, ("polling", "websocket"))


@pytest.mark.parametrize("name", ["web1", "web2"])
def test_a_web_process_killed_is_started_again_and_the_address_keeps_answering(cluster, name):
    pid, port = cluster.pid_of(name), cluster.port_of(name)
    seen = len(cluster.output())
    os.killpg(pid, signal.SIGKILL)  # gunicorn's master and its worker: a process group of their own
    # nginx hands the request to the other web process while this one is down.
    assert requests.get(f"{cluster.url}/api/models", timeout=60).status_code == 200
    restarted = int(cluster.wait_for(rf"started {name} again \(pid (\d+)\)", seen).group(1))
    assert restarted != pid
    deadline = time.monotonic() + HANG_S
    while True:
        try:
            assert requests.get(f"http://127.0.0.1:{port}/api/models", timeout=30).status_code == 200
            break
        except (requests.ConnectionError, requests.Timeout):
            assert time.monotonic() < deadline, cluster.output()
            time.sleep(0.3)
    assert requests.get(f"{cluster.url}/api/models", timeout=60).status_code == 200


def alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie (ended, not yet reaped) does not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def program_name(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_sigterm_stops_redis_nginx_the_web_processes_and_the_workers(cluster):
    children = process_tree(cluster.process.pid)[1:]
    names = {program_name(pid) for pid in children}
    assert {"redis-server", "nginx"} <= names and len(children) >= 8, names  # and gunicorn's, RQ's
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.wait(HANG_S) == 0, cluster.output()
    assert [pid for pid in children if alive(pid)] == [], cluster.output()
    for name in ("nginx", "web1", "web2", "worker1", "redis"):
        assert f"stopped {name}" in cluster.output()
