"""Two web processes handing jobs to workers (``CONVLENS_JOB_QUEUE=rq``), the workers, a real ``redis-server`` and
real Socket.IO viewers: the ``Cluster`` the worker tests and the load test start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import requests
import socketio
from rq import Worker

from convlens.models.default import DEFAULT_MODEL_ID
from local import REPO, Served, start_serve
from redis_fixtures import RedisServer

ENDS_S = 240
"""A hang guard for a job to reach a state: never reached when things work."""
PREFIX = "workers:"
STUCK_PLUGIN = Path(__file__).parent / "stuck_plugin"
LONG = {"method": "class_model", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {"steps": 2000}}
SHORT = {"method": "class_model", "model": DEFAULT_MODEL_ID, "image": "chelsea", "params": {"steps": 6}}
ALICE, BOB = {"convlens_client": "a" * 32}, {"convlens_client": "b" * 32}


class Web:
    """One ``convlens serve`` process, its jobs handed to workers."""

    def __init__(self, served: Served) -> None:
        self.served = served
        self.url = served.url

    def get(self, path: str, cookies: dict = ALICE) -> dict:
        answer = requests.get(self.url + path, cookies=cookies, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def submit(self, body: dict, cookies: dict = ALICE) -> str:
        answer = requests.post(f"{self.url}/api/jobs", json=body, cookies=cookies, timeout=60)
        assert answer.status_code == 202, answer.text
        return answer.json()["id"]

    def control(self, job_id: str, action: str, cookies: dict = ALICE) -> dict:
        answer = requests.post(f"{self.url}/api/jobs/{job_id}/{action}", cookies=cookies, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def wait_for(self, job_id: str, done: Callable[[dict], object], what: str) -> dict:
        deadline = time.monotonic() + ENDS_S
        while not done(job := self.get(f"/api/jobs/{job_id}")):
            assert time.monotonic() < deadline, f"job {job_id} not {what} after {ENDS_S} s: {job}"
            time.sleep(0.1)
        return job

    def kill(self) -> None:
        """SIGKILL the gunicorn master and its worker process."""
        pid = self.served.process.pid
        (child,) = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for victim in (int(child), pid):
            os.kill(victim, signal.SIGKILL)
        self.served.process.wait(30)


def ended(job: dict) -> bool:
    return job["state"] in ("done", "failed", "stopped")


def stepping(job: dict) -> bool:
    return (job.get("progress") or {}).get("step", 0) >= 2


class Viewer:
    """A real Socket.IO client watching one job: it acknowledges each frame, as the page does."""

    def __init__(
        self, url: str, job_id: str, fmt: str = "jpeg", transports: tuple[str, ...] = ("websocket",)
    ) -> None:
        self.job_id = job_id
        self.events: list[tuple[str, dict]] = []
        self.ended = threading.Event()
        self.client = socketio.Client(reconnection=False)
        for name in ("job", "progress", "metrics", "metrics_history", "log", "done", "failed", "stopped"):
            self.client.on(name, self._keeper(name))
        self.client.on("frame", self._frame)
        self.client.connect(
            url, transports=list(transports), headers={"Cookie": "convlens_client=" + "a" * 32}
        )
        answer = self.client.call("subscribe", {"job": job_id, "format": fmt}, timeout=60)
        assert answer["ok"], answer

    def _keeper(self, name: str):
        def keep(message: dict) -> None:
            self.events.append((name, message))
            if name in ("done", "failed", "stopped"):
                self.ended.set()

        return keep

    def _frame(self, message: dict) -> None:
        self.events.append(("frame", message))
        self.client.emit("frame_ack", {"job": message["job"], "seq": message["seq"]})

    def frames(self) -> list[dict]:
        return [message for name, message in self.events if name == "frame"]

    def wait_frames(self, count: int) -> None:
        deadline = time.monotonic() + ENDS_S
        while len(self.frames()) < count:
            assert time.monotonic() < deadline, f"{len(self.frames())} frames after {ENDS_S} s"
            time.sleep(0.05)

    def wait_end(self) -> str:
        assert self.ended.wait(ENDS_S), f"no final event: {[name for name, _ in self.events]}"
        return next(name for name, _ in self.events if name in ("done", "failed", "stopped"))

    def close(self) -> None:
        self.client.disconnect()


class Cluster:
    """Redis (append-only, as a deployment's), web processes over one data folder, workers: started with
    :func:`running_cluster`."""

    def __init__(self, models_dir: Path, folder: Path) -> None:
        self.models_dir = models_dir
        self.redis = RedisServer(folder / "redis", durable=True)
        (folder / "redis").mkdir()
        self.data = folder / "data"
        self.env = {
            "CONVLENS_REDIS_URL": self.redis.url + f"?prefix={PREFIX}",
            "CONVLENS_JOB_QUEUE": "rq",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(STUCK_PLUGIN), os.environ.get("PYTHONPATH")])),
        }
        self.webs: list[Web] = []
        self.workers: dict[str, subprocess.Popen] = {}

    def start_web(self) -> Web:
        web = Web(start_serve(self.models_dir, self.data, env=self.env))
        self.webs.append(web)
        return web

    def start_worker(self, name: str) -> None:
        log = open(self.data / f"worker-{name}.log", "a")  # noqa: SIM115 (the process writes it)
        command = [
            sys.executable,
            "-m",
            "convlens",
            "--models-dir",
            str(self.models_dir),
            "worker",
            "--name",
            name,
        ]
        environment = {**os.environ, "CONVLENS_DATA_DIR": str(self.data), "PYTHONUNBUFFERED": "1", **self.env}
        self.workers[name] = subprocess.Popen(
            command, env=environment, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
        )
        deadline = time.monotonic() + 180
        connection = redis.Redis(port=self.redis.port)
        process = self.workers[name]
        # This very process registered (not a namesake that was killed and is still listed).
        while not any(w.name == name and w.pid == process.pid for w in Worker.all(connection=connection)):
            assert self.workers[name].poll() is None, (self.data / f"worker-{name}.log").read_text()
            assert time.monotonic() < deadline, "the worker did not register with RQ"
            time.sleep(0.2)

    def worker_of(self, web: Web, job_id: str) -> str:
        """The name of the worker that runs the job, from the job's log."""
        lines = web.wait_for(job_id, lambda job: job["state"] != "queued", "taken")
        deadline = time.monotonic() + ENDS_S
        while True:
            logs = [line["message"] for line in self.record_logs(job_id)]
            named = [line.split()[3] for line in logs if line.startswith("run by worker ")]
            if named:
                return named[0]
            assert time.monotonic() < deadline, (lines, logs)
            time.sleep(0.1)

    def record_logs(self, job_id: str) -> list[dict]:
        logs = self.redis.client().hget(f"{PREFIX}job:{job_id}", "logs")
        return json.loads(logs or "[]")

    def stop(self) -> None:
        for process in [web.served.process for web in self.webs] + list(self.workers.values()):
            if process.poll() is None:
                process.terminate()
        for process in [web.served.process for web in self.webs] + list(self.workers.values()):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis.kill()


@contextmanager
def running_cluster(
    models_dir: Path, folder: Path, webs: int = 2, workers: tuple[str, ...] = ("w1", "w2"), **env: str
) -> Iterator[Cluster]:
    """A started :class:`Cluster` in ``folder`` (``env``: more settings for its processes), stopped after."""
    cluster = Cluster(models_dir, folder)
    cluster.env.update(env)
    cluster.data.mkdir()
    cluster.redis.start()
    try:
        for _ in range(webs):
            cluster.start_web()
        for name in workers:
            cluster.start_worker(name)
        yield cluster
    finally:
        cluster.stop()
