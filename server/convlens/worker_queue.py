"""The web side of jobs run by workers (``CONVLENS_JOB_QUEUE=rq``): queueing them, and controlling them.

A submitted job is counted against the queue limits (in Redis, over every web process), saved ``queued`` in
its client's line (:mod:`convlens.job_lines`) and given one RQ turn on its device class's queue. Pause and stop
of a job still in its line take it out there and save its new state at once; resume puts it back at the head of
its line with a new turn. A job a worker runs is sent the control on the control channel, which the worker checks
between two steps; a stop not obeyed within :data:`STOP_GRACE_S` (a step stuck in a long computation) becomes
RQ's stop command, which kills the worker's work horse (the job ends ``stopped``, see :mod:`convlens.worker`).
Every change is also put on the bus (:mod:`convlens.bus`), so the viewers on every web process hear of it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .bus import state_message
from .errors import BadInput
from .job_lines import QUEUED_INSTANCE, JobLines
from .jobs import Job

if TYPE_CHECKING:
    from .jobs import JobManager
    from .redis_store import RedisJobStore

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""How long a worker's job may take to obey a stop (reach its next step) before its work horse is killed."""
CONTROL_WAIT_S = 5.0
"""How long a pause, resume or stop of a worker's job waits to see the job's new state, to answer with it."""
TURN = "convlens.worker.take_turn"
"""The function an RQ turn runs in a worker (by name: the web process never imports the worker's code)."""


def queue_name(prefix: str, job_class: str) -> str:
    """The RQ queue of a device class's turns, under the server's key prefix."""
    return f"{prefix}{job_class}"


def control_channel(prefix: str) -> str:
    return f"{prefix}control"


class WorkerQueue:
    """Hands jobs to workers over RQ and Redis, and forwards their controls."""

    def __init__(
        self,
        store: RedisJobStore,
        publish: Callable[[dict[str, Any]], None],
        start_task: Callable[..., Any],
        *,
        max_queued: int = 0,
        max_queued_per_client: int = 0,
        max_run_seconds: float = 0,
    ) -> None:
        import redis
        from rq import Queue

        self.store = store
        self.lines = JobLines(store)
        self.publish = publish
        """Puts a message on the bus (:meth:`convlens.bus.BusManager.publish`)."""
        self.start_task = start_task
        self.max_queued = max_queued
        self.max_queued_per_client = max_queued_per_client
        self.max_run_seconds = max_run_seconds
        self.manager: JobManager | None = None
        """Set by the manager it serves: controls answer with the job as it reads it."""
        # RQ stores pickled jobs: a connection of its own that does not decode replies.
        self.rq_redis = redis.Redis.from_url(store.url, socket_connect_timeout=2, socket_timeout=10)
        self._queue = lambda job_class: Queue(queue_name(store.prefix, job_class), connection=self.rq_redis)

    # -- submitting ----------------------------------------------------------------------------------
    def submit(self, job: Job, client: str, job_class: str) -> None:
        """Queue a new job for a worker of ``job_class``; over a queue limit, ``BadInput`` (429) naming it."""
        from .scheduler import refuse

        added, own, total = self.store.claim_waiting(
            job.id, client, self.max_queued, self.max_queued_per_client
        )
        if not added:
            refuse(own, total, self.max_queued, self.max_queued_per_client)
        try:
            self.store.save_queued(job.record(), client, job_class)
            self.lines.join(job.id, client, job_class)
            self._turn(job_class)
        except Exception:
            self._withdraw(job.id, client, job_class)
            raise

    def _turn(self, job_class: str) -> None:
        """One more RQ turn for a worker of ``job_class``."""
        timeout = int(self.max_run_seconds) + 3600 if self.max_run_seconds else -1
        self.store.call(
            lambda: self._queue(job_class).enqueue(
                TURN,
                job_class,
                job_timeout=timeout,
                result_ttl=0,
                failure_ttl=86400,
                description="convlens turn",
            )
        )

    def _withdraw(self, job_id: str, client: str, job_class: str) -> None:
        """Undo a submission Redis refused half-way (best effort: Redis is likely down)."""
        try:
            self.lines.leave(job_id, client, job_class)
            self.store.leave_waiting(job_id)
            self.store.delete(job_id)
        except BadInput:
            log.warning("job %s: could not withdraw it from Redis", job_id)

    # -- controls ------------------------------------------------------------------------------------
    def control(self, job: Job, action: str) -> Job:
        """Pause, resume or stop ``job``; the job as it is then."""
        if job.finished_state:
            return job
        where = self.store.runner_of(job.id)
        if where is None:
            return job
        instance, state, client, job_class = where
        if instance == QUEUED_INSTANCE:
            changed = self._control_queued(job, action, state, client, job_class)
            if changed is not None:
                return changed
        if job.state == "queued" and action == "resume":
            return job
        self.store.call(lambda: self.store.redis.publish(control_channel(self.store.prefix), json.dumps(
            {"job": job.id, "action": action})))  # fmt: skip
        if action == "stop":
            self.start_task(self._stop_when_stuck, job.id)
        return self._await_change(job.id, job.state, action)

    def _control_queued(self, job: Job, action: str, state: str, client: str, job_class: str) -> Job | None:
        """A control of a job no worker has taken, done here; ``None`` if a worker took it meanwhile."""
        record = self.store.load(job.id)
        if record is None:
            return job
        if action == "resume":
            if state != "paused":
                return job
            changed = {**record, "state": "queued"}
            if not self.store.save_if(changed, QUEUED_INSTANCE, "paused"):
                return None
            self.lines.join(job.id, client, job_class, first=True)
            self._turn(job_class)
        else:
            in_line = state == "queued" and self.lines.leave(job.id, client, job_class)
            if state == "queued" and not in_line:
                return None  # a worker took it: the control goes there
            if action == "pause" and state == "paused":
                return job
            changed = {**record, "state": "paused" if action == "pause" else "stopped"}
            if action == "stop":
                changed["finished"] = time.time()
            if not self.store.save_if(changed, QUEUED_INSTANCE, state):
                if in_line:  # changed by another process meanwhile: leave it as that one left it
                    self.lines.join(job.id, client, job_class, first=True)
                return None
        self.publish(state_message(Job.from_record(changed).to_json()))
        return self._read(job.id)

    def _await_change(self, job_id: str, before: str, action: str) -> Job:
        """The job once a worker has done ``action`` (its state changed), or as it is after :data:`CONTROL_WAIT_S`."""
        deadline = time.monotonic() + CONTROL_WAIT_S
        wanted = {
            "pause": ("paused",),
            "resume": ("running", "queued"),
            "stop": ("stopped", "done", "failed"),
        }
        while True:
            job = self._read(job_id)
            if job.state in wanted[action] or job.finished_state or time.monotonic() >= deadline:
                return job
            time.sleep(0.05)

    def _stop_when_stuck(self, job_id: str) -> None:
        """Kill the work horse of a job that did not obey a stop within :data:`STOP_GRACE_S`."""
        from rq.command import send_stop_job_command
        from rq.exceptions import InvalidJobOperation, NoSuchJobError

        time.sleep(STOP_GRACE_S)
        where = self.store.runner_of(job_id)
        if where is None or where[1] not in ("queued", "running", "paused"):
            return
        turn = self.store.call(lambda: self.store.redis.hget(self.store.key("job", job_id), "rq_job"))
        if turn is None:
            return
        log.warning("job %s did not stop within %g s: killing its worker's work horse", job_id, STOP_GRACE_S)
        try:
            send_stop_job_command(self.rq_redis, turn)
        except (InvalidJobOperation, NoSuchJobError):
            pass  # it ended meanwhile

    def _read(self, job_id: str) -> Job:
        assert self.manager is not None
        return self.manager.get(job_id)
