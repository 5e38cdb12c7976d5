"""A worker's job events on Flask-SocketIO's message queue, and the web processes that follow them.

A worker (:mod:`convlens.worker`) runs a job with the same :class:`~convlens.jobs.JobManager` the embedded server
uses; its sink, :class:`BusEvents`, publishes every event through a write-only ``SocketIO(message_queue=...)`` on
one Redis channel, as one message in the bus namespace. Every web process listens there (:class:`BusManager`, its
Socket.IO client manager) and a :class:`Follower` applies each message to a *mirror* of the job (a
:class:`~convlens.jobs.Job` kept in the process's registry, as its own jobs are), then hands it to the process's
own sink: the same per-viewer frame relay with its backpressure, the same late-join catch-up from the mirror's
newest frame of each label. So a viewer may watch from any web process, and no frame leaves a web process for a
viewer that did not subscribe.

One channel for every kind of event keeps them in the order the job made them (a job's final event after its
last frame). A web process's own emits go to its own clients only: each process gets the workers' events itself.
Frames travel as uint8 pixels (each web process encodes them for its viewers, in the format each asked for).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import socketio
from socketio.manager import Manager
from socketio.packet import Packet

from . import events as ev
from .encode import EncodedFrame
from .jobs import FINAL_STATES, Job

if TYPE_CHECKING:
    from .jobs import JobEvents, JobRegistry

log = logging.getLogger(__name__)

BUS_NAMESPACE = "/convlens-bus"
"""The namespace of the workers' messages: no client connects to it, so none is ever sent one."""
BUS_EVENT = "job-event"
MIRROR_LINGER_S = 30.0
"""How long a web process keeps an ended job's mirror (its newest frames) before reading it from its record."""
RECONCILE_EVERY_S = 2.0


def channel_of(prefix: str) -> str:
    """The Redis channel of a server's bus: its key prefix's, so two servers on one Redis stay apart."""
    return f"{prefix}socketio"


class BusEvents:
    """A worker's :class:`~convlens.jobs.JobEvents`: each event one message on the bus, in order."""

    def __init__(self, redis_url: str, channel: str) -> None:
        from flask_socketio import SocketIO

        self.socketio = SocketIO(message_queue=redis_url, channel=channel)
        """Write-only (no app): it publishes on the message queue and serves nobody."""

    def publish(self, message: dict[str, Any]) -> None:
        self.socketio.emit(BUS_EVENT, message, namespace=BUS_NAMESPACE)

    def state(self, job: Job) -> None:
        self.publish(state_message(job.to_json()))

    def frame(self, job: Job, frame: EncodedFrame) -> None:
        pixels = frame.pixels  # made on the job's thread, by torch where the frame is a tensor
        self.publish(
            {
                "kind": "frame",
                "job": job.id,
                "seq": frame.seq,
                "step": frame.step,
                "label": frame.label,
                "shape": list(pixels.shape),
                "pixels": np.ascontiguousarray(pixels).tobytes(),
            }
        )

    def progress(self, job: Job) -> None:
        self.publish({"kind": "progress", "job": job.id, "progress": job.progress})

    def metrics(self, job: Job, points: list[dict[str, Any]]) -> None:
        self.publish({"kind": "metrics", "job": job.id, "points": points})

    def positions(self, job: Job, points: ev.Points) -> None:
        data = points.positions.astype("<f4").tobytes()
        self.publish(
            {"kind": "points", "job": job.id, "step": points.step, "label": points.label, "data": data}
        )

    def predictions(self, job: Job, predictions: ev.Predictions) -> None:
        self.publish(
            {"kind": "predictions", "job": job.id, "step": predictions.step, "tops": predictions.tops}
        )

    def log(self, job: Job, level: str, message: str) -> None:
        self.publish({"kind": "log", "job": job.id, "level": level, "message": message})


def state_message(job_json: dict[str, Any]) -> dict[str, Any]:
    """The bus message of a job's state (``Job.to_json()``), from a worker or a web process that changed it."""
    return {"kind": "state", "job": job_json["id"], "record": job_json}


class BusManager(socketio.RedisManager):
    """A web process's Socket.IO client manager: its emits reach its own clients only, and the bus's messages go
    to ``on_message`` (on the manager's one listening thread, in the order they were published)."""

    def __init__(self, redis_url: str, channel: str, on_message: Callable[[dict[str, Any]], None]) -> None:
        super().__init__(redis_url, channel=channel)
        self.on_message = on_message

    def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        return Manager.emit(
            self, event, data, namespace=namespace, room=to or room, skip_sid=skip_sid, callback=callback
        )

    def publish(self, message: dict[str, Any]) -> None:
        """Put a message on the bus (a web process's change of a queued job), this process's follower first."""
        self.on_message(message)
        self._publish(
            {"method": "emit", "event": BUS_EVENT, "data": [message], "binary": False,
             "namespace": BUS_NAMESPACE, "room": None, "skip_sid": None, "callback": None,
             "host_id": self.host_id}
        )  # fmt: skip

    def _handle_emit(self, message: dict[str, Any]) -> None:
        if message.get("namespace") != BUS_NAMESPACE or message.get("event") != BUS_EVENT:
            return  # nothing else is published on this channel
        data = message["data"]
        if message.get("binary"):
            data = Packet.reconstruct_binary(data[0], [base64.b64decode(part) for part in data[1:]])
        self.on_message(data[0] if isinstance(data, list) else data)


class Follower:
    """Keeps a web process's mirrors of the jobs workers run, from the bus, and tells its viewers."""

    def __init__(self, registry: JobRegistry, sink: JobEvents, jpeg_quality: int = 85) -> None:
        self.registry = registry
        self.sink = sink
        self.jpeg_quality = jpeg_quality
        self._ended: dict[str, float] = {}
        """Mirrors of ended jobs, by when they ended here: let go after :data:`MIRROR_LINGER_S`."""
        self._lock = threading.Lock()

    def apply(self, message: dict[str, Any]) -> None:
        """One bus message; a malformed one (another version's) is logged and dropped."""
        try:
            self._apply(message)
        except Exception:
            log.exception(
                "bus message %r of job %r could not be applied", message.get("kind"), message.get("job")
            )

    def _apply(self, message: dict[str, Any]) -> None:
        kind, job_id = message["kind"], message["job"]
        job = self._mirror(job_id, message.get("record"))
        if job is None:
            return
        if kind == "state":
            self._state(job, message["record"])
        elif kind == "frame":
            pixels = np.frombuffer(message["pixels"], np.uint8).reshape(message["shape"])
            frame = EncodedFrame(message["seq"], message["step"], message["label"], pixels, self.jpeg_quality)
            job.keep_frame(frame)
            self.sink.frame(job, frame)
        elif kind == "progress":
            job.progress = message["progress"]
            self.sink.progress(job)
        elif kind == "metrics":
            job.keep_metrics(message["points"])
            self.sink.metrics(job, message["points"])
        elif kind == "points":
            positions = np.frombuffer(message["data"], "<f4").reshape(-1, 2)
            points = ev.Points(positions, step=message["step"], label=message["label"])
            job.latest_points[points.label] = points
            self.sink.positions(job, points)
        elif kind == "predictions":
            predictions = ev.Predictions(message["tops"], step=message["step"])
            job.latest_tops.add(predictions)
            self.sink.predictions(job, predictions)
        elif kind == "log":
            job.add_log(message["level"], message["message"])
            self.sink.log(job, message["level"], message["message"])

    def _mirror(self, job_id: str, record: dict[str, Any] | None) -> Job | None:
        """The job's mirror, made from its record (the message's, else the store's) the first time."""
        job = self.registry.mirror(job_id)
        if job is not None:
            return job
        stored = self.registry.records.load(job_id)
        if stored is None and record is None:
            return None  # deleted meanwhile
        job = Job.from_record({**(stored or {}), **(record or {})})
        if not job.finished_state:
            job.ended.clear()
        self.registry.follow(job)
        return job

    def _state(self, job: Job, record: dict[str, Any]) -> None:
        for name in ("state", "progress", "metrics", "error", "predictions", "result", "started", "finished"):
            setattr(job, name, record.get(name))
        job.metrics = job.metrics or {}
        job.predictions = job.predictions or []
        job.frames = max(job.frames, record.get("frames") or 0)
        job.files = record.get("files")
        self.sink.state(job)
        if job.state in FINAL_STATES:
            job.ended.set()
            with self._lock:
                self._ended[job.id] = time.monotonic()

    def reconcile(self) -> None:
        """Let go of mirrors that ended a while ago; end those whose record ended without a message saying so (a
        worker killed: its job failed by the process that found it gone, or a message lost while Redis
        restarted)."""
        now = time.monotonic()
        with self._lock:
            old = [job_id for job_id, ended in self._ended.items() if now - ended > MIRROR_LINGER_S]
            for job_id in old:
                del self._ended[job_id]
        for job_id in old:
            self.registry.unfollow(job_id)
        for job in self.registry.mirrors():
            if job.finished_state:
                continue
            record = self.registry.records.load(job.id)
            if record is None:
                self.registry.unfollow(job.id)
            elif record["state"] != job.state and record["state"] in FINAL_STATES:
                self._state(job, record)

    def keep_reconciling(self, stopped: threading.Event) -> None:
        while not stopped.wait(RECONCILE_EVERY_S):
            try:
                self.reconcile()
            except Exception as error:  # Redis restarting: the next round tries again
                log.warning("following the workers' jobs: %s", error)
