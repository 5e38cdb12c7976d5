"""Jobs: one run of a method on a model and image, executed in the background.

Data flows one way: validated request → :class:`Job` → the method's generator →
events → a :class:`JobEvents` sink (the Socket.IO rooms, in the server). Nothing
here knows Flask or Socket.IO, and nothing here knows what a method computes.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import events as ev
from . import runner
from .encode import EncodedFrame
from .errors import BadInput, NotFound
from .methods import Method
from .models.base import Model
from .results import Reel, RunRecord, write_result
from .streaming import SLOWEST_SEND_S, STREAM_BUDGET, STREAM_HZ

if TYPE_CHECKING:
    from .features import FeatureStore

log = logging.getLogger(__name__)

STATES = ("queued", "running", "paused", "done", "failed", "stopped")
FINAL_STATES = ("done", "failed", "stopped")
MAX_METRICS_HISTORY = 5000
MAX_LATE_LABELS = 32
"""How many frame labels a job keeps its newest frame of, for a viewer who subscribes late; past that, the label
whose newest frame is the oldest is forgotten."""


class JobEvents(Protocol):
    """Where a job's events go. The server implements it with Socket.IO rooms."""

    def state(self, job: Job) -> None: ...
    def frame(self, job: Job, frame: EncodedFrame) -> None: ...
    def progress(self, job: Job) -> None: ...
    def metrics(self, job: Job, points: list[dict[str, Any]]) -> None: ...
    def positions(self, job: Job, points: ev.Points) -> None: ...
    def predictions(self, job: Job, predictions: ev.Predictions) -> None: ...
    def log(self, job: Job, level: str, message: str) -> None: ...


@dataclass
class Outbox:
    """What a running job has not yet sent to its viewers (see ``STREAM_HZ`` and ``STREAM_BUDGET``).

    The job's thread fills it; that thread and a request's (pause, resume) send it, under ``lock``.
    """

    frame: EncodedFrame | None = None
    progress: bool = False
    points: list[dict[str, Any]] = field(default_factory=list)
    positions: dict[str, ev.Points] = field(default_factory=dict)
    """The newest :class:`~convlens.events.Points` of each label not yet sent (latest wins, like the frame)."""
    tops: ev.PanelTops = field(default_factory=ev.PanelTops)
    """The newest top classes of each panel not yet sent (latest wins per panel, like the frame per job)."""
    sent_at: float = float("-inf")
    cost: float | None = None
    """Seconds a send takes, smoothed over the last few; ``None`` before the first."""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


@dataclass
class Job:
    id: str
    method: str
    model: str
    image: str
    params: dict[str, Any]
    seed: int
    state: str = "queued"
    progress: dict[str, float] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_history: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    result: dict[str, Any] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    frames: int = 0
    latest_frames: dict[str, EncodedFrame] = field(default_factory=dict, repr=False)
    """The newest frame of each label (of :data:`MAX_LATE_LABELS` at most), in the order the labels first
    appeared: what a viewer who subscribes late is shown, as a viewer who watched saw it."""
    latest_points: dict[str, ev.Points] = field(default_factory=dict, repr=False)
    """The newest Points of each label, for a viewer who subscribes late."""
    latest_tops: ev.PanelTops = field(default_factory=ev.PanelTops, repr=False)
    """The newest top classes of each panel, for a viewer who subscribes late and for ``result.json``."""
    reel: Reel = field(default_factory=Reel, repr=False)
    """The frames for the run's GIF."""
    outbox: Outbox = field(default_factory=Outbox, repr=False)
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    resume_event: threading.Event = field(default_factory=threading.Event, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    """Set once the job is done, failed or stopped, after its viewers were sent the final state."""

    def __post_init__(self) -> None:
        self.resume_event.set()

    @property
    def latest_frame(self) -> EncodedFrame | None:
        """The job's newest frame, of any label (``GET /api/jobs/<id>/frames/latest``)."""
        kept = list(self.latest_frames.values())  # one step, so the job's thread cannot change it meanwhile
        return max(kept, key=lambda frame: frame.seq, default=None)

    @property
    def finished_state(self) -> bool:
        return self.state in FINAL_STATES

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "model": self.model,
            "image": self.image,
            "params": self.params,
            "seed": self.seed,
            "state": self.state,
            "progress": self.progress,
            "metrics": self.metrics,
            "error": self.error,
            "predictions": self.predictions,
            "result": self.result,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "frames": self.frames,
        }


class JobStore(Protocol):
    """Where job records live; in memory here, replaceable by a shared store for scale-out."""

    def add(self, job: Job) -> None: ...
    def get(self, job_id: str) -> Job | None: ...
    def all(self) -> list[Job]: ...


class InMemoryJobStore:
    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda job: job.created, reverse=True)


class JobManager:
    """Validates job requests, runs them in background tasks and reports their events."""

    def __init__(
        self,
        *,
        get_model: Callable[[str], Model],
        get_method: Callable[[str], Method],
        get_image: Callable[[str], np.ndarray],
        get_dataset: runner.DatasetSource | None = None,
        models: runner.ModelSource | None = None,
        features: FeatureStore | None = None,
        sink: JobEvents,
        start_task: Callable[..., Any],
        results_dir: Path,
        store: JobStore | None = None,
        max_running: int = 2,
        jpeg_quality: int = 85,
        stream_hz: float = STREAM_HZ,
        stream_budget: float = STREAM_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.get_model = get_model
        self.get_method = get_method
        self.get_image = get_image
        self.get_dataset = get_dataset
        self.models = models
        self.features = features
        self.sink = sink
        self.start_task = start_task
        self.results_dir = Path(results_dir)
        self.store = store or InMemoryJobStore()
        self.slots = threading.BoundedSemaphore(max(1, max_running))
        self.jpeg_quality = jpeg_quality
        self.send_interval = 1.0 / stream_hz if stream_hz > 0 else 0.0
        self.stream_budget = stream_budget
        self.clock = clock

    # -- requests ------------------------------------------------------------------------------------
    def submit(self, request: Any) -> Job:
        """Check a job request completely, then start it; ``BadInput`` names the first wrong field."""
        if not isinstance(request, dict):
            raise BadInput("body", "expected a JSON object with method, model, image and params")
        method = self.get_method(_required_string(request, "method"))
        model = self.get_model(_required_string(request, "model"))
        reason = method.unavailable_reason(model)
        if reason:
            raise BadInput("method", f"{method.name!r} cannot run here: {reason}", status=422)
        image_id = _required_string(request, "image")
        self.get_image(image_id)
        raw_params = request.get("params") or {}
        if not isinstance(raw_params, dict):
            raise BadInput("params", "expected an object of parameter values")
        params = method.validate(raw_params, model)
        runner.resolve_pictures(method, params, self.get_image)  # an unknown style image fails the request
        runner.checked_datasets(method, params, model, self.get_dataset)  # so does an unknown data set
        runner.checked_model_ids(method, params, model.id, self.models)  # and an unknown model
        seed = request.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise BadInput("seed", f"expected a non-negative integer, got {seed!r}")
        job = Job(secrets.token_hex(6), method.name, model.id, image_id, params, seed)
        self.store.add(job)
        self.start_task(self._run, job)
        return job

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound("job", f"unknown job {job_id!r}")
        return job

    def stop(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.stop_requested.set()
        job.resume_event.set()
        return job

    def pause(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job.state in ("queued", "running"):
            job.resume_event.clear()
            if job.state == "running":
                self._set_state(job, "paused")
        return job

    def resume(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.resume_event.set()
        if job.state == "paused":
            self._set_state(job, "running")
        return job

    # -- running -------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        with self.slots:
            try:
                self._execute(job)
            except BadInput as error:
                self._fail(job, error.to_json())
            except Exception as error:  # a plugin's bug must not take the server down
                log.exception("job %s (%s) failed", job.id, job.method)
                self._fail(job, {"error": f"{type(error).__name__}: {error}", "field": None})

    def _execute(self, job: Job) -> None:
        if job.stop_requested.is_set():
            self._finish(job, "stopped")
            return
        job.started = time.time()
        self._set_state(job, "running" if job.resume_event.is_set() else "paused")
        method = self.get_method(job.method)
        model = self.get_model(job.model)
        image = self.get_image(job.image)
        ctx = runner.prepare_run(
            method,
            model,
            image,
            job.params,
            job.seed,
            images=self.get_image,
            datasets=self.get_dataset,
            features=self.features,
            models=self.models,
        )
        job.predictions = model.predict(ctx.model_input(), k=5)
        self.sink.state(job)
        final: ev.Result | None = None
        generator = runner.iterate(method, ctx)
        try:
            for event in generator:
                if not job.resume_event.is_set():
                    self._wait_while_paused(job)
                if job.stop_requested.is_set():
                    break
                if isinstance(event, ev.Result):
                    final = event
                else:
                    self._handle(job, event)
        finally:
            generator.close()
        self._send(job)  # the last step's frame and numbers, before the result files are written
        if job.stop_requested.is_set() and final is None:
            self._finish(job, "stopped")
            return
        self._complete(job, model, final or ev.Result())

    def _wait_while_paused(self, job: Job) -> None:
        # What the steps made since a pause request (which sent the outbox then, from its own thread).
        self._send(job)
        if job.state == "running":
            self._set_state(job, "paused")
        job.resume_event.wait()
        if job.state == "paused" and not job.stop_requested.is_set():
            self._set_state(job, "running")

    def _handle(self, job: Job, event: ev.Event) -> None:
        if isinstance(event, ev.Frame):
            # No pixels yet: a tensor becomes pixels only if a viewer gets it, and the reel's at the end.
            frame = EncodedFrame(job.frames, event.step, event.label, ev.held(event.image), self.jpeg_quality)
            job.frames += 1
            _keep_newest(job.latest_frames, frame)
            job.reel.add(frame.image)
            with job.outbox.lock:
                job.outbox.frame = frame
        elif isinstance(event, ev.Points):
            job.latest_points[event.label] = event
            with job.outbox.lock:
                job.outbox.positions[event.label] = event
        elif isinstance(event, ev.Predictions):
            job.latest_tops.add(event)
            with job.outbox.lock:
                job.outbox.tops.add(event)
        elif isinstance(event, ev.Progress):
            # The server's clock at the step, so a viewer can show the run's own it/s, not its receipt times.
            with job.outbox.lock:
                job.progress = {"step": event.step, "total": event.total, "time": time.time()}
                job.outbox.progress = True
        elif isinstance(event, ev.Metrics):
            values = {name: float(value) for name, value in event.values.items()}
            job.metrics = values
            point = {"step": event.step, "values": values}
            if len(job.metrics_history) < MAX_METRICS_HISTORY:
                job.metrics_history.append(point)
            with job.outbox.lock:
                job.outbox.points.append(point)
        elif isinstance(event, ev.Log):
            job.logs.append({"level": event.level, "message": event.message})
            self._send(job)  # what came before the line, first
            self.sink.log(job, event.level, event.message)
            return
        else:
            raise TypeError(f"method {job.method!r} yielded {type(event).__name__}, not a convlens event")
        # Once a job reports progress, its sends wait for the end of a step (its Progress event). Methods
        # yield a step's frame and metrics between its forward and backward passes, and a send there leaves
        # the caches cold for the backward pass. Other events send only once a send is twice overdue.
        spacing = self._spacing(job.outbox)
        if job.progress is not None and not isinstance(event, ev.Progress):
            spacing *= 2
        if self.clock() - job.outbox.sent_at >= spacing:
            self._send(job)

    def _send(self, job: Job) -> bool:
        """Send what the job's viewers have not seen yet: the newest frame, the newest Points of each label, the
        newest top classes of each panel, the metrics points, then progress; whether there was anything to send.

        The frame first: its pixels and JPEG are made before a message wakes the sockets' threads, which would
        take the GIL whenever a torch op lets go of it (a 128-px frame's pixels took 0.7 ms after the metrics
        were emitted, 0.2 ms before).
        """
        outbox = job.outbox
        with outbox.lock:  # held while sending, so two threads' sends cannot interleave out of order
            outbox.sent_at = self.clock()
            waiting = outbox.frame is not None or bool(outbox.tops)
            if not (waiting or outbox.points or outbox.positions or outbox.progress):
                return False
            if outbox.frame is not None:
                frame, outbox.frame = outbox.frame, None
                self.sink.frame(job, frame)
            if outbox.positions:
                positions, outbox.positions = outbox.positions, {}
                for points in positions.values():
                    self.sink.positions(job, points)
            if outbox.tops:
                tops, outbox.tops = outbox.tops, ev.PanelTops()
                for predictions in tops.events():
                    self.sink.predictions(job, predictions)
            if outbox.points:
                points, outbox.points = outbox.points, []
                self.sink.metrics(job, points)
            if outbox.progress:
                outbox.progress = False
                self.sink.progress(job)
            seconds = self.clock() - outbox.sent_at
            outbox.cost = seconds if outbox.cost is None else (outbox.cost + seconds) / 2
        return True

    def _spacing(self, outbox: Outbox) -> float:
        """The least time from one send to the next: ``STREAM_HZ``'s, or more where sends as costly as the last
        few would take over ``stream_budget`` of the job's time (but at most ``SLOWEST_SEND_S``)."""
        if self.stream_budget <= 0 or outbox.cost is None:
            return self.send_interval
        return max(self.send_interval, min(SLOWEST_SEND_S, outbox.cost / self.stream_budget))

    def _complete(self, job: Job, model: Model, result: ev.Result) -> None:
        record = RunRecord(
            method=job.method,
            model_id=model.id,
            model_sha256=model.sha256,
            model_format=model.format,
            image=job.image,
            params=job.params,
            seed=job.seed,
            predictions=job.predictions,
            metrics=job.metrics,
            data=result.data,
            panel_predictions=ev.panel_predictions(job.latest_tops),
        )
        out_dir = self.results_dir / job.id
        summary = write_result(out_dir, record, result.images, job.reel.frames(), result.arrays)
        summary["images"] = {name: f"/api/jobs/{job.id}/images/{name}.png" for name in result.images}
        summary["array_urls"] = {name: f"/api/jobs/{job.id}/arrays/{name}.npy" for name in result.arrays}
        if (out_dir / "frames.gif").exists():
            summary["animation"] = f"/api/jobs/{job.id}/frames.gif"
        job.result = summary
        self._finish(job, "done")

    def _fail(self, job: Job, error: dict[str, Any]) -> None:
        job.error = error
        self._finish(job, "failed")

    def _finish(self, job: Job, state: str) -> None:
        job.finished = time.time()
        job.reel = Reel()  # written, or not to be
        self._set_state(job, state)
        job.ended.set()

    def _set_state(self, job: Job, state: str) -> None:
        self._send(job)  # a state change comes after every event before it
        job.state = state
        self.sink.state(job)


def _keep_newest(frames: dict[str, EncodedFrame], frame: EncodedFrame) -> None:
    """``frame`` as the newest of its label in ``frames``, which keeps :data:`MAX_LATE_LABELS` labels at most."""
    if frame.label not in frames and len(frames) >= MAX_LATE_LABELS:
        del frames[min(frames, key=lambda label: frames[label].seq)]
    frames[frame.label] = frame


def _required_string(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if not isinstance(value, str) or not value:
        raise BadInput(name, f"a non-empty string is required, got {value!r}")
    return value
