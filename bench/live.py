"""What every bench script shares: a real ``convlens serve`` on 127.0.0.1, a Socket.IO viewer, medians.

The server runs as a subprocess on a free port and is always terminated (``with convlens_server(...)``),
also when the bench is interrupted or sent SIGTERM by ``bench/run.py``'s time limit. All traffic stays on
127.0.0.1: proxies from the environment are switched off for this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
LOCAL = "127.0.0.1"

os.environ["NO_PROXY"] = os.environ["no_proxy"] = f"{LOCAL},localhost"


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit`` so ``finally`` blocks (which stop servers) run."""

    def handler(_signum, _frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, handler)


def ensure_models() -> Path:
    """The checkout's ``models/`` with the default model in all three formats, written if missing."""
    from convlens.models.default import ensure_default_models

    ensure_default_models(MODELS_DIR, log=lambda message: print(message, file=sys.stderr))
    return MODELS_DIR


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCAL, 0))
        return probe.getsockname()[1]


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


@dataclass
class Server:
    url: str
    pid: int
    log_path: Path


@contextmanager
def server_process(
    command: Sequence[str],
    port: int,
    ready_path: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
) -> Iterator[Server]:
    """Run ``command`` (a server on 127.0.0.1:``port``) until the ``with`` block ends; wait for ``ready_path``."""
    workdir = Path(tempfile.mkdtemp(prefix="convlens-bench-"))
    log_path = workdir / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CONVLENS_DATA_DIR": str(workdir / "data"), **(env or {})}
    url = f"http://{LOCAL}:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(list(command), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout
        client = http()
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if client.get(url + ready_path, timeout=30).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within {timeout:.0f} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield Server(url, process.pid, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def convlens_server(models_dir: Path = MODELS_DIR, env: dict[str, str] | None = None) -> Iterator[Server]:
    """``python -m convlens serve`` on a free port of 127.0.0.1, with a throwaway data folder; ``env`` adds to
    its environment (``CONVLENS_STREAM_HZ``, ...)."""
    port = free_port()
    command = [sys.executable, "-m", "convlens", "--models-dir", str(models_dir), "serve", "--host", LOCAL]
    command += ["--port", str(port)]
    with server_process(command, port, "/api/models", env=env) as server:
        yield server


@dataclass
class JobRecord:
    """What a viewer saw of one job, with ``time.time()`` receipt times (comparable with the server's)."""

    job_id: str
    progress: list[tuple[float, int]] = field(default_factory=list)
    """(receipt time, step) of each ``progress`` event."""
    step_times: list[tuple[float, int]] = field(default_factory=list)
    """(the server's clock at the step, step) of each ``progress`` event: the job's own pace."""
    frames: list[tuple[float, int, int]] = field(default_factory=list)
    """(receipt time, seq, payload bytes) of each frame."""
    job: dict[str, Any] = field(default_factory=dict)
    end: str | None = None
    end_time: float | None = None
    finished: threading.Event = field(default_factory=threading.Event)


class LeanClient:
    """The part of a Socket.IO client (protocol 5 over Engine.IO 4) that a viewer uses, on a bare websocket.

    ``python-socketio``'s client took 1.3-1.7 ms of CPU per step of a 224-px class model (a frame, a
    progress and a metrics event, and an ack), 3-4% of a step on a machine whose two cores the job keeps
    busy. A browser on another machine costs the job nothing; this client, which decodes only the events it
    has a handler for and answers the server's pings, took 0.8 ms while acknowledging three times the frames. Same interface as the
    ``socketio.Client`` calls :class:`Viewer` makes: ``on``, ``connect``, ``emit``, ``call``, ``disconnect``.
    No reconnection, no polling transport, default namespace only.
    """

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self.answers: dict[int, list] = {}
        self.answered = threading.Condition()
        self.next_id = 0
        self.socket: Any = None

    def on(self, name: str, handler: Callable[[Any], None]) -> None:
        self.handlers[name] = handler

    def connect(self, url: str, transports: Sequence[str] = ("websocket",), wait_timeout: float = 30) -> None:
        import websocket

        address = url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.socket = websocket.create_connection(address, timeout=wait_timeout, enable_multithread=True)
        if not self.socket.recv().startswith("0"):
            raise RuntimeError(f"{address}: no Engine.IO open packet")
        self.socket.send("40")
        while not (reply := self.socket.recv()).startswith("40"):
            if reply.startswith("44"):
                raise RuntimeError(f"Socket.IO connect refused: {reply[2:]}")
        self.socket.settimeout(None)
        threading.Thread(target=self._read, name="lean-viewer", daemon=True).start()

    def emit(self, name: str, data: Any) -> None:
        self.socket.send("42" + json.dumps([name, data]))

    def call(self, name: str, data: Any, timeout: float = 60) -> Any:
        with self.answered:
            self.next_id += 1
            ack_id = self.next_id
        self.socket.send(f"42{ack_id}" + json.dumps([name, data]))
        with self.answered:
            if not self.answered.wait_for(lambda: ack_id in self.answers, timeout):
                raise TimeoutError(f"no answer to {name!r} within {timeout:g} s")
            answer = self.answers.pop(ack_id)
        return answer[0] if answer else None

    def disconnect(self) -> None:
        try:
            self.socket.send("41")
        finally:
            self.socket.close()

    def _read(self) -> None:
        import websocket

        waiting: tuple[str, dict] | None = None  # a binary event's name and data, until its attachment
        while True:
            try:
                message = self.socket.recv()
            except (websocket.WebSocketException, OSError):
                return
            if isinstance(message, bytes):
                if waiting is not None:
                    name, data = waiting
                    waiting = None
                    self.handlers[name](
                        {key: message if _is_placeholder(value) else value for key, value in data.items()}
                    )
            elif message == "2":
                self.socket.send("3")
            elif message.startswith(("42", "451-")):
                start = message.index("[")
                name = message[start + 2 : message.index('"', start + 2)]
                if name in self.handlers:
                    name, data = json.loads(message[start:])
                    if message.startswith("451-"):
                        waiting = (name, data)
                    else:
                        self.handlers[name](data)
            elif message.startswith("43"):
                start = message.index("[")
                with self.answered:
                    self.answers[int(message[2:start])] = json.loads(message[start:])
                    self.answered.notify_all()


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, dict) and value.get("_placeholder") is True


class Viewer:
    """One Socket.IO client over a websocket that acknowledges each frame ``ack_delay`` seconds after it arrives."""

    def __init__(
        self, url: str, ack_delay: float = 0.0, max_fps: float = 0.0, nice: int = 0, lean: bool = False
    ) -> None:
        """``max_fps`` > 0: acknowledge a frame only once ``1/max_fps`` s have passed since the last
        acknowledgement, as the page's ``<convlens-job-view max-fps>`` does (its default is 20).

        ``nice`` > 0: the client's threads run at that niceness, so on a machine whose cores the job keeps
        busy the viewer gets the time left over, as a viewer on another machine costs the job nothing.

        ``lean``: a :class:`LeanClient` instead of ``python-socketio``'s client."""
        import socketio

        self.ack_delay = ack_delay
        self.min_interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self.last_ack = float("-inf")
        self.record: JobRecord | None = None
        self.client = LeanClient() if lean else socketio.Client(reconnection=False)
        self.client.on("frame", self._on_frame)
        self.client.on("progress", self._on_progress)
        self.client.on("job", self._on_job)
        for name in ("done", "failed", "stopped"):
            self.client.on(name, lambda data, name=name: self._on_end(name, data))
        in_fresh_thread(lambda: self._connect(url, nice))

    def _connect(self, url: str, nice: int) -> None:
        # Threads inherit their creator's niceness: the client's reader and writer threads start here.
        if nice:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        self.client.connect(url, transports=["websocket"], wait_timeout=30)

    def watch(self, job_id: str) -> JobRecord:
        """Subscribe to ``job_id``; events of the job are recorded from now on."""
        self.record = JobRecord(job_id)
        answer = self.client.call("subscribe", {"job": job_id}, timeout=30)
        if not answer or not answer.get("ok"):
            raise RuntimeError(f"subscribe refused: {answer}")
        self._on_job(answer["job"])
        return self.record

    def wait(self, timeout: float) -> JobRecord:
        record = self.record
        if record is None or not record.finished.wait(timeout):
            raise TimeoutError(f"job {record.job_id if record else '?'} did not end within {timeout:.0f} s")
        self.client.call("unsubscribe", {"job": record.job_id}, timeout=30)
        if record.end != "done":
            raise RuntimeError(f"job {record.job_id} ended {record.end}: {record.job.get('error')}")
        return record

    def close(self) -> None:
        self.client.disconnect()

    def _current(self, data: dict) -> JobRecord | None:
        record = self.record
        return record if record is not None and data.get("job", data.get("id")) == record.job_id else None

    def _on_frame(self, data: dict) -> None:
        now = time.time()
        record = self._current(data)
        if record is None:
            return
        record.frames.append((now, data["seq"], len(data["data"])))
        if self.ack_delay:
            time.sleep(self.ack_delay)
        wait = self.last_ack + self.min_interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self.last_ack = time.monotonic()
        self.client.emit("frame_ack", {"job": record.job_id, "seq": data["seq"]})

    def _on_progress(self, data: dict) -> None:
        now = time.time()
        record = self._current(data)
        if record is not None:
            record.progress.append((now, data["step"]))
            record.step_times.append((data["time"], data["step"]))

    def _on_job(self, data: dict) -> None:
        record = self._current(data)
        if record is not None and (data.get("finished") or not record.job.get("finished")):
            record.job = data

    def _on_end(self, name: str, data: dict) -> None:
        now = time.time()
        record = self._current(data)
        if record is not None and record.end is None:
            record.end, record.end_time = name, now
            record.finished.set()


def submit(url: str, body: dict) -> str:
    """POST a job to the server at ``url``; its id."""
    answer = http().post(f"{url}/api/jobs", json=body, timeout=60)
    if answer.status_code != 202:
        raise RuntimeError(f"POST /api/jobs answered {answer.status_code}: {answer.text}")
    return answer.json()["id"]


def watched_job(url: str, viewer: Viewer | None, body: dict, steps: int, timeout: float) -> dict:
    """One ``steps``-step job POSTed to the server at ``url`` and watched by ``viewer`` to its end: its id,
    its rates (:func:`job_rates`) and the frames the viewer received. No viewer: :func:`unwatched_job`."""
    if viewer is None:
        return unwatched_job(url, body, steps, timeout)
    job_id = submit(url, body)
    viewer.watch(job_id)
    record = viewer.wait(timeout)
    return {"job": job_id, **job_rates(record, steps), "frames_received": len(record.frames)}


def unwatched_job(url: str, body: dict, steps: int, timeout: float) -> dict:
    """:func:`watched_job` with nobody watching: the rates from ``GET /api/jobs/<id>``, read every 5 ms until
    the first step is done, then every 0.5 s until the job ends (the ``progress`` record carries the server's
    clock at its step, so the polls' timing does not enter the rates)."""
    job_id = submit(url, body)
    session, deadline = http(), time.monotonic() + timeout
    first, job = None, {}

    def read() -> dict:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not end within {timeout:.0f} s")
        answer = session.get(f"{url}/api/jobs/{job_id}", timeout=30)
        answer.raise_for_status()
        return answer.json()

    while job.get("state") not in ("done", "failed", "stopped"):
        time.sleep(0.005 if first is None else 0.5)
        job = read()
        progress = job.get("progress") or {}
        if first is None and progress.get("step", 0) >= 1:
            first = (progress["time"], progress["step"])
    if job["state"] != "done":
        raise RuntimeError(f"job {job_id} ended {job['state']}: {job.get('error')}")
    (first_time, first_step), last = first, job["progress"]
    if last["step"] != steps:
        raise RuntimeError(f"job {job_id}: last progress {last['step']}, expected {steps}")
    per_step = rate(last["step"] - first_step, last["time"] - first_time)
    return {
        "job": job_id,
        "end_to_end_its": rate(steps, job["finished"] - job["started"]),
        "per_step_its": per_step,
        "per_step_received_its": float("nan"),
        "before_first_step_s": first_time - job["started"] - 1.0 / per_step,
        "after_last_step_s": job["finished"] - last["time"],
        "frames_received": 0,
    }


def add_viewer_options(parser: argparse.ArgumentParser) -> None:
    """``--viewer-fps``, ``--viewer-client`` and ``--viewer-nice``: how the bench's :class:`Viewer` acknowledges
    frames, which client it is and how it shares the CPU (see :func:`viewer_from_args`)."""
    parser.add_argument(
        "--viewer-fps",
        type=float,
        default=0.0,
        help="frames a second the viewer acknowledges at most (the page's max-fps is 20); default 0: at once",
    )
    parser.add_argument(
        "--viewer-client",
        choices=("lean", "socketio"),
        default="lean",
        help="the viewer's Socket.IO client: lean (LeanClient, default: the least CPU taken from the job, as a"
        " viewer on another machine) or socketio (python-socketio's)",
    )
    parser.add_argument(
        "--viewer-nice",
        type=int,
        default=0,
        help="run the viewer's threads at this niceness (19: it gets only the CPU time the job leaves, as a"
        " viewer on another machine); default 0",
    )
    parser.add_argument(
        "--no-viewer",
        action="store_true",
        help="nobody watches the convlens jobs (rates read over HTTP): what the server and job cost apart"
        " from streaming",
    )


def viewer_from_args(url: str, args: argparse.Namespace) -> Viewer | None:
    if args.no_viewer:
        return None
    return Viewer(url, max_fps=args.viewer_fps, nice=args.viewer_nice, lean=args.viewer_client == "lean")


def viewer_note(args: argparse.Namespace) -> str:
    if args.no_viewer:
        return "no viewer"
    fps = f"at most {args.viewer_fps:g} frames/s" if args.viewer_fps > 0 else "every frame at once"
    return f"viewer ({args.viewer_client} client) acks {fps}, niceness {args.viewer_nice}"


def sandwiched(
    convlens: Callable[[], dict],
    bare: Callable[[], dict],
    repeats: int,
    report: Callable[[int, str, dict], None],
) -> dict[str, list[dict]]:
    """``repeats`` convlens runs, each between two bare ones (bare, convlens, bare, ..., convlens, bare).

    This machine's speed drifts by ±10% over seconds (other tenants of the host), so two runs compare well
    only when they are close in time: :func:`neighbour_ratios` sets each convlens run against the bare runs
    just before and after it. ``report(repeat, side, run)`` is called after each run.
    """
    runs: dict[str, list[dict]] = {"bare": [], "convlens": []}
    for index in range(2 * repeats + 1):
        side = "convlens" if index % 2 else "bare"
        runs[side].append(convlens() if index % 2 else bare())
        report(index // 2 + 1, side, runs[side][-1])
    return runs


def neighbour_ratios(runs: dict[str, list[dict]], convlens_key: str, bare_key: str) -> list[float]:
    """Each convlens run's ``convlens_key`` over the mean ``bare_key`` of the bare runs on either side of it."""
    bare = [run[bare_key] for run in runs["bare"]]
    return [
        run[convlens_key] / ((bare[index] + bare[index + 1]) / 2)
        for index, run in enumerate(runs["convlens"])
    ]


def print_pooled(details: dict[str, dict]) -> None:
    """With more than one case, print the per-step ratios of all of them (``details[case]["ratios"]["step"]``)
    pooled: median, quartiles and the overhead they mean."""
    pooled = [ratio for detail in details.values() for ratio in detail["ratios"]["step"]]
    if len(details) > 1:
        low, high = quartiles(pooled)
        print(
            f"all cases pooled, per step / bare: median {median(pooled):.3f}, quartiles {low:.3f}-{high:.3f}"
            f" ({len(pooled)} convlens runs): convlens overhead {100 * (1 / median(pooled) - 1):+.1f}% time"
        )


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The lower and upper quartile (both the value itself for one value)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def job_rates(record: JobRecord, steps: int) -> dict[str, float]:
    """A finished job's rates as a viewer saw it.

    - ``end_to_end_its``: steps / (the job's ``started`` → the viewer receives ``done``);
    - ``per_step_its``: steps per second between the first and the last step by the server's clock (the
      ``time`` of each ``progress`` event): what one step costs while the job streams to the viewer;
    - ``per_step_received_its``: the same from when the viewer received those events, which adds any
      delivery lag (on 2 cores the viewer process competes with the job for the CPU);
    - ``before_first_step_s`` and ``after_last_step_s``: the fixed costs around the steps (top-5 of the
      input before, writing PNG, GIF and JSON after).
    """
    started = record.job["started"]
    (first_time, first_step), (last_time, last_step) = record.step_times[0], record.step_times[-1]
    (first_received, _), (last_received, _) = record.progress[0], record.progress[-1]
    if last_step != steps:
        raise RuntimeError(f"job {record.job_id}: last progress {last_step}, expected {steps}")
    per_step = rate(last_step - first_step, last_time - first_time)
    return {
        "end_to_end_its": rate(steps, record.end_time - started),
        "per_step_its": per_step,
        "per_step_received_its": rate(last_step - first_step, last_received - first_received),
        "before_first_step_s": first_time - started - 1.0 / per_step,
        "after_last_step_s": record.end_time - last_time,
    }


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def write_summary(path: str | None, rows: list[dict[str, Any]], details: dict[str, Any]) -> None:
    """Rows for ``bench/run.py``'s table: ``{figure, convlens, reference, ratio, unit}``."""
    if path:
        Path(path).write_text(json.dumps({"rows": rows, "details": details}, indent=2))


def stream_note() -> str:
    """How often the bench's server sends a job's frames, progress and metrics (``CONVLENS_STREAM_HZ``) and the
    share of the job's time its sends may take (``CONVLENS_STREAM_BUDGET``)."""
    from convlens.config import Config

    config = Config()
    budget = f"{config.stream_budget:.1%} of a job's time" if config.stream_budget > 0 else "no budget"
    return f"server sends at most {config.stream_hz:g} times a second, within {budget}"


def machine_note() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"


def in_fresh_thread(function: Callable[[], T]) -> T:
    """``function()`` run in a new thread, as convlens runs each job (``socketio.start_background_task``).

    On 2 cores this matters: torch work in the main thread leaves it an OpenMP team, and a loop in another
    thread then ran ~30% slower than in a fresh one.
    """
    outcome: list = []

    def target() -> None:
        try:
            outcome.append((True, function()))
        except BaseException as error:  # re-raised in the caller's thread
            outcome.append((False, error))

    thread = threading.Thread(target=target, name="bench-work", daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def pixel_space(net, mean, std):
    """``net`` taking [0, 1] pixels, normalised inside as ``Model.normalise`` does: the ``nn.Module`` (in eval
    mode) a reference tool that needs one (torchattacks, ART) is given, so it sees what convlens sees."""
    import torch
    from torch import nn

    class PixelSpace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.net((images - self.mean) / self.std)

    return PixelSpace().eval()
