"""Jobs: one run of a method on a model and image, executed in the background.

Data flows one way: validated request → :class:`Job` → the method's generator →
events → a :class:`JobEvents` sink (the Socket.IO rooms, in the server). Nothing
here knows Flask or Socket.IO, and nothing here knows what a method computes.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import devices, gallery, late_view, runner
from . import events as ev
from .config import TRAINED_FOLDER
from .encode import EncodedFrame
from .errors import BadInput, NotFound
from .methods import Method
from .models.base import Model
from .results import Reel, RunRecord, write_result
from .scheduler import FairQueue
from .streaming import SLOWEST_SEND_S, STREAM_BUDGET, STREAM_HZ

if TYPE_CHECKING:
    from .features import FeatureStore
    from .worker_queue import WorkerQueue

log = logging.getLogger(__name__)

STATES = ("queued", "running", "paused", "done", "failed", "stopped")
LOCAL_CLIENT = "local"
"""The client of a job submitted without one (``convlens run``, a test): its turns in the fair queue."""
FINAL_STATES = ("done", "failed", "stopped")
MAX_METRICS_HISTORY = 5000
"""Metrics points a job keeps for a late viewer's chart (and its record); later points only stream."""
MAX_LOG_LINES = 1000
"""Log lines a job keeps (and its record); past that the oldest go, counted in a first line that says so."""
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
    owner: str | None = None
    """Who submitted the job (``convlens.auth.client_id()``); ``None`` for a job not submitted by a request."""
    files: str | None = None
    """``"kept"`` once a done job's results folder is written, ``"deleted"`` when it was removed by hand."""
    again_of: str | None = None
    """The job this one runs again (``POST /api/jobs/<id>/again``): the same request and seed."""
    same_result: bool | None = None
    """For a run again that ended done: whether its result's hash equals the first run's (``None``: not known)."""
    logs_dropped: int = 0
    """How many of the oldest log lines went to keep :data:`MAX_LOG_LINES`."""
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

    def keep_frame(self, frame: EncodedFrame) -> None:
        """Count the frame and keep it as its label's newest (for late viewers)."""
        self.frames = max(self.frames, frame.seq + 1)
        _keep_newest(self.latest_frames, frame)

    def keep_metrics(self, points: list[dict[str, Any]]) -> None:
        """The newest points (``{step, values}``): the last one's values are the job's metrics; the history keeps
        the first :data:`MAX_METRICS_HISTORY`."""
        self.metrics = points[-1]["values"]
        self.metrics_history.extend(points[: max(MAX_METRICS_HISTORY - len(self.metrics_history), 0)])

    def add_log(self, level: str, message: str) -> None:
        """Keep a log line, dropping the oldest past :data:`MAX_LOG_LINES`."""
        self.logs.append({"level": level, "message": message})
        if len(self.logs) > MAX_LOG_LINES:
            del self.logs[0]
            self.logs_dropped += 1

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
            "files": self.files,
            "again_of": self.again_of,
            "same_result": self.same_result,
        }

    def summary(self) -> dict[str, Any]:
        """What ``GET /api/jobs`` lists of the job: no parameters, metrics or result, a picture's URL if any."""
        return summary_of(self.to_json())

    def record(self) -> dict[str, Any]:
        """All a :class:`JobStore` keeps: ``to_json``, the owner, the metrics history and the log."""
        logs = list(self.logs)
        if self.logs_dropped:
            logs.insert(0, {"level": "warning", "message": f"… {self.logs_dropped} earlier lines dropped"})
        return {
            **self.to_json(),
            "owner": self.owner,
            "metrics_history": list(self.metrics_history),
            "logs": logs,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Job:
        """A finished job as its record has it (no frames: see :mod:`convlens.late_view`)."""
        job = cls(
            record["id"],
            record["method"],
            record["model"],
            record["image"],
            record["params"],
            record["seed"],
            state=record["state"],
            progress=record.get("progress"),
            metrics=record.get("metrics") or {},
            metrics_history=record.get("metrics_history") or [],
            logs=record.get("logs") or [],
            error=record.get("error"),
            predictions=record.get("predictions") or [],
            result=record.get("result"),
            created=record["created"],
            started=record.get("started"),
            finished=record.get("finished"),
            frames=record.get("frames", 0),
            owner=record.get("owner"),
            files=record.get("files"),
            again_of=record.get("again_of"),
            same_result=record.get("same_result"),
        )
        job.ended.set()
        return job


def summary_of(job: dict[str, Any]) -> dict[str, Any]:
    """A job's JSON (``Job.to_json``) made a list entry: who, what, when, how it ended, a picture to show."""
    result = job.get("result") or {}
    images = result.get("images") or {}
    return {
        "id": job["id"],
        "method": job["method"],
        "model": job["model"],
        "image": job["image"],
        "state": job["state"],
        "created": job["created"],
        "started": job.get("started"),
        "finished": job.get("finished"),
        "error": (job.get("error") or {}).get("error"),
        "thumbnail": next(iter(images.values()), None),
        "animation": result.get("animation"),
        "files": job.get("files"),
    }


class JobStore(Protocol):
    """Where job records (``Job.record()``, plain JSON) live: SQLite by default (:mod:`convlens.job_db`), in
    memory here; small so that a shared store (Redis, PostgreSQL) can replace it for scale-out."""

    def save(self, record: dict[str, Any]) -> None: ...
    def load(self, job_id: str) -> dict[str, Any] | None: ...
    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Newest first, after the job ``before`` (``KeyError`` if unknown); history and logs may be left out."""
        ...

    def count(self, owner: str | None = None) -> int: ...
    def unfinished(self) -> list[dict[str, Any]]: ...
    def finished_before(self, when: float) -> list[str]: ...
    def delete(self, job_id: str) -> None: ...


class InMemoryJobStore:
    """Job records in this process only (gone with it): for a ``JobManager`` made without a database."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def save(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._records[record["id"]] = record

    def load(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._records.get(job_id)

    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            records = sorted(self._records.values(), key=lambda r: (r["created"], r["id"]), reverse=True)
            if before is not None:
                cursor = self._records[before]
                records = [r for r in records if (r["created"], r["id"]) < (cursor["created"], before)]
        return [r for r in records if owner is None or r.get("owner") == owner][:limit]

    def count(self, owner: str | None = None) -> int:
        with self._lock:
            return sum(owner is None or r.get("owner") == owner for r in self._records.values())

    def unfinished(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self._records.values() if r["state"] not in FINAL_STATES]

    def finished_before(self, when: float) -> list[str]:
        with self._lock:
            return [r["id"] for r in self._records.values() if (r.get("finished") or when) < when]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._records.pop(job_id, None)


class JobRegistry:
    """The jobs a manager knows: queued, running and paused ones in memory (they own a thread and its events),
    every one's record in a :class:`JobStore`; an ended job leaves memory, and is rebuilt from its record."""

    def __init__(self, records: JobStore) -> None:
        self.records = records
        self.live: dict[str, Job] = {}
        self.followed: dict[str, Job] = {}
        """Mirrors of jobs a worker runs (:class:`convlens.bus.Follower`), kept from its events."""
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        self.records.save(job.record())  # first: a job its store refused is not kept in memory either
        with self._lock:
            self.live[job.id] = job

    def save(self, job: Job) -> None:
        self.records.save(job.record())

    def retire(self, job: Job) -> None:
        """Record the ended job and let it go: its frames, GIF reel and outbox with it."""
        self.records.save(job.record())
        with self._lock:
            self.live.pop(job.id, None)

    def holds(self, job_id: str) -> bool:
        """Whether the job is this process's own, in memory (queued, running or paused here)."""
        with self._lock:
            return job_id in self.live

    def follow(self, job: Job) -> None:
        with self._lock:
            self.followed[job.id] = job

    def unfollow(self, job_id: str) -> None:
        with self._lock:
            self.followed.pop(job_id, None)

    def mirror(self, job_id: str) -> Job | None:
        with self._lock:
            return self.followed.get(job_id)

    def mirrors(self) -> list[Job]:
        with self._lock:
            return list(self.followed.values())

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self.live.get(job_id)
            mirror = self.followed.get(job_id)
        if job is not None or (mirror is not None and mirror.finished_state):
            return job or mirror
        record = self.records.load(job_id)
        if mirror is not None and record is not None and record["state"] not in FINAL_STATES:
            return (
                mirror  # its frames and numbers are newer than the record's; an end it missed is the record's
            )
        return None if record is None else Job.from_record(record)

    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Summaries (``Job.summary``), newest first; a job in memory as it is now."""
        with self._lock:
            live = {**self.followed, **self.live}
        return [
            live[record["id"]].summary() if record["id"] in live else summary_of(record)
            for record in self.records.page(limit, before, owner)
        ]


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
        max_queued: int = 0,
        max_queued_per_client: int = 0,
        max_run_seconds: float = 0,
        jpeg_quality: int = 85,
        stream_hz: float = STREAM_HZ,
        stream_budget: float = STREAM_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        workers: WorkerQueue | None = None,
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
        self.store = JobRegistry(store if store is not None else InMemoryJobStore())
        self.queue = FairQueue(
            max_running,
            max_queued=max_queued,
            max_queued_per_client=max_queued_per_client,
            # A store several processes share (Redis) counts the limits over all of their waiting jobs.
            shared=store if hasattr(store, "claim_waiting") else None,
        )
        self.max_run_seconds = max_run_seconds
        """Seconds a job may run (paused time not counted) before it fails naming the limit; 0: no limit."""
        self._control = threading.RLock()
        """Held while a job's state and its place in the queue change together (pause, resume, stop, admission)."""
        self._paused_threads: dict[str, threading.Event] = {}
        """The jobs whose thread waits in a pause, each with the event that wakes it once it has a slot again."""
        self.jpeg_quality = jpeg_quality
        self.send_interval = 1.0 / stream_hz if stream_hz > 0 else 0.0
        self.stream_budget = stream_budget
        self.clock = clock
        self.after_end: Callable[[Job], None] | None = None
        """Called once a job has ended and been recorded (retention, :mod:`convlens.gallery`)."""
        self.workers = workers
        """Where jobs go to be run by worker processes (``CONVLENS_JOB_QUEUE=rq``); ``None``: run here."""

    # -- requests ------------------------------------------------------------------------------------
    def submit(self, request: Any, client: str | None = None, again_of: str | None = None) -> Job:
        """Check a job request completely, then queue it for a slot; ``BadInput`` names the first wrong field, or
        the queue limit it is over (429). ``client`` (:func:`convlens.auth.client_id`) owns it and has its turns in
        the fair queue; without one it is :data:`LOCAL_CLIENT`'s."""
        if not isinstance(request, dict):
            raise BadInput("body", "expected a JSON object with method, model, image and params")
        method = self.get_method(_required_string(request, "method"))
        model = self.get_model(_required_string(request, "model"))
        reason = method.unavailable_reason(model)
        if reason:
            raise BadInput("method", f"{method.name!r} cannot run here: {reason}", status=422)
        image_id = _required_string(request, "image")
        picture = self.get_image(image_id)
        raw_params = request.get("params") or {}
        if not isinstance(raw_params, dict):
            raise BadInput("params", "expected an object of parameter values")
        params = method.validate(raw_params, model)
        if method.check_image is not None:
            method.check_image(params, model, picture)
        runner.resolve_pictures(method, params, self.get_image)  # an unknown style image fails the request
        runner.checked_datasets(method, params, model, self.get_dataset)  # so does an unknown data set
        runner.checked_model_ids(method, params, model.id, self.models)  # and an unknown model
        seed = request.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise BadInput("seed", f"expected a non-negative integer, got {seed!r}")
        job_class = devices.parse_device_class(request.get("device"))
        job = Job(secrets.token_hex(6), method.name, model.id, image_id, params, seed, owner=client)
        job.again_of = again_of
        if self.workers is not None:
            self.workers.submit(job, client or LOCAL_CLIENT, job_class)
            return job
        if job_class == "gpu":
            raise BadInput(
                "device",
                "this server runs jobs in its own process, on the CPU; a GPU job needs workers "
                "(CONVLENS_JOB_QUEUE=rq and `convlens worker --device cuda:0`)",
                status=422,
            )
        with self._control:  # a slot given meanwhile on another thread starts the job only once it is stored
            self.queue.add(job.id, client or LOCAL_CLIENT, lambda: self.start_task(self._run, job))
            try:
                self.store.add(job)
            except Exception:
                self.queue.withdraw(job.id)  # a store that cannot take it (Redis down) leaves nothing queued
                raise
        self.queue.dispatch()
        return job

    def run_here(self, job: Job, client: str) -> None:
        """Run a job another process queued (a worker's turn, :mod:`convlens.worker`) on this thread, to its end,
        as a job submitted here runs: the same slot, events, pauses and result."""
        with self._control:
            self.store.add(job)
            self.queue.add(job.id, client, partial(self._run, job))
        self.queue.dispatch()  # admits it on this thread: _run returns once the job has ended

    def get(self, job_id: str) -> Job:
        """The job: the live one while it runs, else rebuilt from its record (``files`` says if its folder went)."""
        job = self.store.get(job_id)
        if job is None:
            raise NotFound("job", f"unknown job {job_id!r}")
        if job.files == "kept" and not self._files_kept(job.id):
            job.files = "deleted"
        return job

    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Summaries of up to ``limit`` jobs, newest first, after the job ``before`` (``KeyError`` if unknown)."""
        summaries = self.store.page(limit, before, owner)
        for summary in summaries:
            if summary["files"] == "kept" and not self._files_kept(summary["id"]):
                summary["files"] = "deleted"
        return summaries

    def count(self, owner: str | None = None) -> int:
        """How many jobs the store holds (``owner``'s only, when given), live and ended."""
        return self.store.records.count(owner)

    def shown_last(self, job: Job) -> Job:
        """``job`` with the frames, points and top classes it showed last: an ended job out of memory reads them
        from its results folder (:mod:`convlens.late_view`)."""
        if job.finished_state and not job.latest_frames:
            late_view.load(self.results_dir / job.id / late_view.FOLDER, job, self.jpeg_quality)
        return job

    def _files_kept(self, job_id: str) -> bool:
        # result.json is written last (results.write_result): without it the folder is not a run's.
        return (self.results_dir / job_id / "result.json").is_file()

    def recover(self) -> list[str]:
        """Fail the jobs a previous process left queued, running or paused (it died with them); their ids."""
        lost = []
        for record in self.store.records.unfinished():
            job = Job.from_record(record)
            job.error = {
                "error": f"the server restarted while this job was {job.state} (its process ended with it)",
                "field": None,
            }
            job.state = "failed"
            job.finished = time.time()
            self.store.records.save(job.record())
            lost.append(job.id)
        return lost

    def prune(self, before: float) -> list[str]:
        """Delete the records and results folders of the jobs that ended before ``before`` (Unix seconds)."""
        pruned = self.store.records.finished_before(before)
        self.discard(pruned)
        return pruned

    def discard(self, job_ids: list[str]) -> None:
        """Delete the ended jobs' records, results folders and trained networks (retention, pruning)."""
        for job_id in job_ids:
            self._remove_files(job_id)
            self.store.records.delete(job_id)

    def ended_records(self, owner: str | None = None, before: str | None = None) -> Iterator[dict[str, Any]]:
        """The ended jobs' records (without history or log), newest first, of ``owner`` (``None``: all), after the
        job ``before`` (``KeyError`` if unknown), read a page at a time."""
        while page := self.store.records.page(500, before, owner):
            yield from (record for record in page if record["state"] in FINAL_STATES)
            before = page[-1]["id"]

    def again(self, job_id: str, client: str | None = None) -> Job:
        """A new job of ``job_id``'s request: method, model, image, parameters and the seed it ran with."""
        first = self.get(job_id)
        request = {
            "method": first.method,
            "model": first.model,
            "image": first.image,
            "params": first.params,
            "seed": first.seed,
        }
        return self.submit(request, client, again_of=first.id)

    def _remove_files(self, job_id: str) -> None:
        """The job's results folder and the networks it trained (``<trained>/<job id>-<name>.*``)."""
        shutil.rmtree(self.results_dir / job_id, ignore_errors=True)
        for path in (self.results_dir.parent / TRAINED_FOLDER).glob(f"{job_id}-*"):
            path.unlink(missing_ok=True)

    def delete(self, job_id: str, client: str) -> None:
        """Delete an ended job's record, results folder and trained networks, for its owner ``client`` only (403 for anyone else,
        409 while it is queued, running or paused: stop it first)."""
        job = self.get(job_id)
        if job.owner is None or job.owner != client:
            raise BadInput(
                "job", f"job {job_id!r} is not yours to delete: only the client that ran it may", status=403
            )
        if not job.finished_state:
            raise BadInput("job", f"job {job_id!r} is {job.state}: stop it before deleting it", status=409)
        self._remove_files(job.id)
        self.store.records.delete(job.id)

    def stop(self, job_id: str) -> Job:
        """Stop the job; one that never had a slot is ``stopped`` at once, a running one at its next event."""
        job = self.get(job_id)
        if (elsewhere := self._elsewhere(job, "stop")) is not None:
            return elsewhere
        with self._control:
            job.stop_requested.set()
            job.resume_event.set()
            withdrawn = self.queue.withdraw(job.id)  # if it holds no slot, it is given none
            wake = self._paused_threads.get(job.id)
            if wake is not None:
                wake.set()  # its thread, held in a pause, ends the job (without a slot, if withdrawn)
            elif withdrawn:
                self._finish(job, "stopped")  # it never had a thread: nothing else would end it
        return job

    def pause(self, job_id: str) -> Job:
        """Pause a queued or running job at once; it holds no slot while paused (a running one gives it back at
        its next event)."""
        job = self.get(job_id)
        if (elsewhere := self._elsewhere(job, "pause")) is not None:
            return elsewhere
        with self._control:
            if job.state not in ("queued", "running"):
                return job
            job.resume_event.clear()
            wake = self._paused_threads.get(job.id)
            if wake is not None and self.queue.release(job.id, partial(self._readmit, job)):
                wake.clear()  # given a slot after a resume, its thread had not gone on yet: it waits again
            else:
                self.queue.hold(job.id)  # one waiting for a slot gets none until resumed
            self._set_state(job, "paused")
        self.queue.dispatch()
        return job

    def resume(self, job_id: str) -> Job:
        """Resume a paused job: ``running`` if a slot is free for it, else ``queued`` for its turn."""
        job = self.get(job_id)
        if (elsewhere := self._elsewhere(job, "resume")) is not None:
            return elsewhere
        with self._control:
            job.resume_event.set()
            if job.state != "paused":
                return job
            # A job that had run goes first in its client's line: it holds memory, and it was started first.
            self.queue.unhold(job.id, first=job.id in self._paused_threads)
            self.queue.dispatch()  # a slot given here sets the state, under this (re-entrant) lock
            if self.queue.is_waiting(job.id):
                self._set_state(job, "queued")
            elif job.state == "paused":
                self._set_state(job, "running")
        return job

    def _elsewhere(self, job: Job, action: str) -> Job | None:
        """``action`` done where another process runs the unfinished job: a worker's is forwarded to it (the job
        as it is then); another web process's sharing the store is a 409 (not forwarded). ``None``: the job is
        this process's (or ended) to control here."""
        if job.finished_state or self.store.holds(job.id):
            return None
        if self.workers is not None:
            return self.workers.control(job, action)
        raise BadInput(
            "job",
            f"job {job.id} is {job.state} in another web process sharing this job store; pause, resume and "
            "stop reach it only through that process",
            status=409,
        )

    # -- running -------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        """The job's thread, started once the job has a slot."""
        try:
            self._execute(job)
        except BadInput as error:
            self._fail(job, error.to_json())
        except Exception as error:  # a plugin's bug must not take the server down
            log.exception("job %s (%s) failed", job.id, job.method)
            self._fail(job, {"error": f"{type(error).__name__}: {error}", "field": None})
        finally:
            self.queue.done(job.id)
            self.queue.dispatch()  # its slot to the next job

    def _execute(self, job: Job) -> None:
        with self._control:
            if job.stop_requested.is_set():
                self._finish(job, "stopped")
                return
            job.started = time.time()
            if job.state == "queued":  # not paused (or already resumed) since it was given its slot
                self._set_state(job, "running")
        began, paused_s = time.monotonic(), 0.0
        if not job.resume_event.is_set():  # paused after it was given its slot: the slot goes back now
            paused_s += self._wait_while_paused(job)
            if job.stop_requested.is_set():
                self._finish(job, "stopped")
                return
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
                    paused_s += self._wait_while_paused(job)
                if job.stop_requested.is_set():
                    break
                self._check_run_time(time.monotonic() - began - paused_s)
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

    def _wait_while_paused(self, job: Job) -> float:
        """Hold the paused job's thread, its slot given back, until it has one again or is stopped; the seconds
        it waited. The method's generator is simply not advanced meanwhile."""
        # What the steps made since a pause request (which sent the outbox then, from its own thread).
        self._send(job)
        began = time.monotonic()
        wake = threading.Event()
        with self._control:
            if job.resume_event.is_set() or job.stop_requested.is_set():
                return 0.0
            if job.state == "running":
                self._set_state(job, "paused")
            self._paused_threads[job.id] = wake
            self.queue.release(job.id, partial(self._readmit, job))
        self.queue.dispatch()
        while True:
            job.resume_event.wait()
            wake.wait()
            with self._control:  # a pause may have come between the resume and this thread's waking
                if job.stop_requested.is_set() or (job.resume_event.is_set() and wake.is_set()):
                    del self._paused_threads[job.id]
                    return time.monotonic() - began

    def _readmit(self, job: Job) -> None:
        """A resumed job has a slot again: its paused thread goes on."""
        with self._control:
            if job.state in ("queued", "paused"):
                self._set_state(job, "running")
            self._paused_threads[job.id].set()

    def _check_run_time(self, seconds: float) -> None:
        if self.max_run_seconds and seconds > self.max_run_seconds:
            raise BadInput(
                "max_run_seconds",
                f"the job ran {seconds:.1f} s, past the server's limit of {self.max_run_seconds:g} s "
                "(CONVLENS_MAX_RUN_SECONDS; time paused is not counted)",
            )

    def _handle(self, job: Job, event: ev.Event) -> None:
        if isinstance(event, ev.Frame):
            # No pixels yet: a tensor becomes pixels only if a viewer gets it, and the reel's at the end.
            frame = EncodedFrame(job.frames, event.step, event.label, ev.held(event.image), self.jpeg_quality)
            job.keep_frame(frame)
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
            point = {"step": event.step, "values": values}
            job.keep_metrics([point])
            with job.outbox.lock:
                job.outbox.points.append(point)
        elif isinstance(event, ev.Log):
            job.add_log(event.level, event.message)
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
        # Config.trained_dir: the results' and trained networks' folders are both in convlens' data folder.
        trained_dir = self.results_dir.parent / TRAINED_FOLDER
        summary = write_result(
            out_dir, record, result.images, job.reel.frames(), result.arrays, result.models, trained_dir
        )
        summary["sha256"] = gallery.result_hash(out_dir, summary, job.id)
        if job.again_of is not None:
            first = self.store.records.load(job.again_of)
            first_hash = ((first or {}).get("result") or {}).get("sha256")
            job.same_result = None if first_hash is None else first_hash == summary["sha256"]
        summary["images"] = {name: f"/api/jobs/{job.id}/images/{name}.png" for name in result.images}
        summary["array_urls"] = {name: f"/api/jobs/{job.id}/arrays/{name}.npy" for name in result.arrays}
        if (out_dir / "frames.gif").exists():
            summary["animation"] = f"/api/jobs/{job.id}/frames.gif"
        job.result = summary
        job.files = "kept"
        self._finish(job, "done")

    def _fail(self, job: Job, error: dict[str, Any]) -> None:
        job.error = error
        self._finish(job, "failed")

    def _finish(self, job: Job, state: str) -> None:
        job.finished = time.time()
        job.reel = Reel()  # written, or not to be
        try:
            late_view.write(self.results_dir / job.id / late_view.FOLDER, job)
        except OSError:  # a full disk loses the late view, not the job's end
            log.exception("job %s: could not keep its late view", job.id)
        self._set_state(job, state)
        self.store.retire(job)
        if self.after_end is not None:
            try:
                self.after_end(job)
            except Exception:  # retention failing (a locked file) must not fail the job that ended
                log.exception("job %s: what follows a job's end failed", job.id)
        job.ended.set()

    def _set_state(self, job: Job, state: str) -> None:
        self._send(job)  # a state change comes after every event before it
        job.state = state
        if state not in FINAL_STATES:
            self.store.save(job)  # the final state's record is saved once the job is retired
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
