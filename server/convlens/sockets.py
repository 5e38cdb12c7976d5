"""Socket.IO handlers: viewers subscribe to a job's room and control the job.

They run on their connection's own thread (``async_handlers=False`` in ``app.py``), one event after another:
none may wait for anything (a job, another event, a client's answer).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import request
from flask_socketio import SocketIO, join_room, leave_room

from .auth import changing_state, check_socket_connect
from .config import origin_list
from .encode import MIME, EncodedFrame
from .errors import BadInput, NotFound
from .events import panel_names
from .openapi import MAX_ID
from .streaming import FrameRelay

if TYPE_CHECKING:
    from .app import Services
    from .events import Points, Predictions
    from .jobs import Job

log = logging.getLogger(__name__)


def room(job_id: str) -> str:
    return f"job:{job_id}"


def final_event(job: Job) -> tuple[str, dict[str, Any]] | None:
    """The event that ends a finished job's stream (``done``, ``failed`` or ``stopped``); ``None`` before."""
    if job.state == "done":
        return "done", {"job": job.id, "result": job.result}
    if job.state == "failed":
        return "failed", {"job": job.id, "error": job.error}
    if job.state == "stopped":
        return "stopped", {"job": job.id}
    return None


def points_message(job: Job, points: Points) -> dict[str, Any]:
    """A ``points`` event: the N x 2 positions as binary little-endian float32, x0, y0, x1, y1, ...

    Binary, not a JSON list: 10,000 points are 80 kB this way and about three times that as text, and the page
    reads them straight into a ``Float32Array`` for WebGL.
    """
    positions = points.positions
    return {
        "job": job.id,
        "step": points.step,
        "label": points.label,
        "n": len(positions),
        "data": positions.tobytes(),
    }


def predictions_message(job: Job, predictions: Predictions) -> dict[str, Any]:
    """A ``predictions`` event: the top classes of each panel the frames show, by panel name, at ``step``."""
    return {"job": job.id, "step": predictions.step, "tops": predictions.tops}


class RoomEvents:
    """A job's events as Socket.IO messages to its room; frames go through the per-viewer relay."""

    def __init__(self, socketio: SocketIO, relay: FrameRelay) -> None:
        self.socketio = socketio
        self.relay = relay

    def state(self, job: Job) -> None:
        self.socketio.emit("job", job.to_json(), to=room(job.id))
        final = final_event(job)
        if final is not None:
            self.socketio.emit(*final, to=room(job.id))

    def frame(self, job: Job, frame: EncodedFrame) -> None:
        self.relay.publish(job.id, frame)

    def progress(self, job: Job) -> None:
        self.socketio.emit("progress", {"job": job.id, **job.progress}, to=room(job.id))

    def metrics(self, job: Job, points: list[dict[str, Any]]) -> None:
        """The points since the last send, oldest first; ``step`` and ``values`` repeat the newest."""
        newest = points[-1]
        self.socketio.emit("metrics", {"job": job.id, **newest, "points": points}, to=room(job.id))

    def positions(self, job: Job, points: Points) -> None:
        self.socketio.emit("points", points_message(job, points), to=room(job.id))

    def predictions(self, job: Job, predictions: Predictions) -> None:
        self.socketio.emit("predictions", predictions_message(job, predictions), to=room(job.id))

    def log(self, job: Job, level: str, message: str) -> None:
        self.socketio.emit("log", {"job": job.id, "level": level, "message": message}, to=room(job.id))


def register(socketio: SocketIO, services: Services) -> None:
    jobs = services.jobs
    relay = services.relay

    def guarded(handler):
        """``handler`` taking exactly one object; any other payload is answered ``{ok: false, field: "body"}``."""

        def wrapper(*args: Any):
            try:
                if len(args) != 1 or not isinstance(args[0], dict):
                    raise BadInput("body", "expected one object like {job: <id>}")
                return handler(args[0]) or {"ok": True}
            except BadInput as error:
                return {"ok": False, **error.to_json()}

        wrapper.__name__ = handler.__name__
        return wrapper

    @socketio.on_error_default
    def unexpected(error: Exception):
        """A handler's bug is logged and still acknowledged, as the REST API's 500 is, so no client call hangs."""
        log.exception("unhandled error in Socket.IO event %r", request.event["message"])
        if request.event["message"] == "connect":
            return False  # refuse the connection rather than accept one half set up
        return {"ok": False, "error": f"internal error: {type(error).__name__}", "field": None}

    def job_of(data: dict):
        job_id = data.get("job")
        if not isinstance(job_id, str):
            raise BadInput("job", "a job id string is required")
        if len(job_id) > MAX_ID:
            raise NotFound("job", f"no job has an id of {len(job_id)} characters (at most {MAX_ID})")
        return jobs.get(job_id)

    @socketio.on("subscribe")
    @guarded
    def subscribe(data: dict):
        job = jobs.shown_last(job_of(data))  # an ended job's, from disk (a folder deleted by hand: none)
        fmt = data.get("format", "jpeg")
        if fmt not in MIME:
            raise BadInput("format", f"expected one of {sorted(MIME)}, got {fmt!r}")
        join_room(room(job.id))
        socketio.emit("job", job.to_json(), to=request.sid)
        socketio.emit("metrics_history", {"job": job.id, "history": job.metrics_history}, to=request.sid)
        for line in job.logs[-200:]:
            socketio.emit("log", {"job": job.id, **line}, to=request.sid)
        # What a viewer who watched sees now: the newest frame of each label, in the order they first came,
        # each followed by the top classes of its panels; then the lists of panels no kept frame shows.
        sid, shown = request.sid, set()

        def tops_under(frame: EncodedFrame) -> None:
            panels = panel_names(frame.label)
            shown.update(panels)
            for predictions in job.latest_tops.events(panels):
                socketio.emit("predictions", predictions_message(job, predictions), to=sid)

        relay.subscribe(job.id, sid, fmt, latest=lambda: list(job.latest_frames.values()), after=tops_under)
        for points in list(job.latest_points.values()):
            socketio.emit("points", points_message(job, points), to=sid)
        rest = [panel for panel in job.latest_tops.tops() if panel not in shown]
        for predictions in job.latest_tops.events(rest):
            socketio.emit("predictions", predictions_message(job, predictions), to=sid)
        # A job that ended before the viewer joined its room sent its final event to the others only. Read
        # after joining: a job ending meanwhile may send it twice, never not at all.
        final = final_event(job)
        if final is not None:
            socketio.emit(*final, to=request.sid)
        return {"ok": True, "job": job.to_json()}

    @socketio.on("unsubscribe")
    @guarded
    def unsubscribe(data: dict):
        job = job_of(data)
        leave_room(room(job.id))
        relay.unsubscribe(job.id, request.sid)

    @socketio.on("frame_ack")
    @guarded
    def frame_ack(data: dict):
        job = job_of(data)
        seq = data.get("seq")
        if not isinstance(seq, int):
            raise BadInput("seq", "the acknowledged frame's seq (an integer) is required")
        relay.ack(job.id, request.sid, seq)

    @socketio.on("stop")
    @guarded
    def stop(data: dict):
        return {"ok": True, "job": jobs.stop(job_of(data).id).to_json()}

    @socketio.on("pause")
    @guarded
    def pause(data: dict):
        return {"ok": True, "job": jobs.pause(job_of(data).id).to_json()}

    @socketio.on("resume")
    @guarded
    def resume(data: dict):
        return {"ok": True, "job": jobs.resume(job_of(data).id).to_json()}

    @socketio.on("disconnect")
    def disconnect(*_args):
        relay.drop(request.sid)

    @socketio.on("connect")
    def connect(auth: Any = None):
        check_socket_connect(services.config.token, auth)

    # Stop, pause and resume change a job: refused on a connection a page of another origin opened only to
    # watch, as the REST API refuses its POSTs (the handshake's Origin is the connection's).
    origins = origin_list(services.config.cors_origins)
    for event, control in (("stop", stop), ("pause", pause), ("resume", resume)):
        socketio.on(event)(changing_state(origins, control))
