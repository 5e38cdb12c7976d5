"""``convlens worker``: a process that runs the jobs web processes queue (``CONVLENS_JOB_QUEUE=rq``), with RQ.

RQ's forking worker runs each turn (:func:`take_turn`) in a *work horse*, a child process: a job stuck inside a
step can be killed (RQ's stop command, :mod:`convlens.worker_queue`) without the worker, and one that crashes the
interpreter takes only its horse. The horse takes the fairest waiting job of its class (:mod:`convlens.job_lines`)
and runs it with the same :class:`~convlens.jobs.JobManager` the embedded server uses (:meth:`JobManager.run_here`:
the same runner, events, pacing, pause, result files), its events on the bus (:class:`convlens.bus.BusEvents`),
its controls from the control channel. The horse beats its own heartbeat (:mod:`convlens.redis_store`): a worker
killed with its horse has its job failed by a live process, naming it. A horse that dies alone (killed, out of
memory) has its job ended by its worker: ``stopped`` when a stop killed it, else ``failed`` naming the signal.

Models are loaded in the horse, for each job: the worker itself never runs torch, so its forks stay safe (an
OpenMP thread pool does not survive a fork) and a CUDA device is first touched in the horse.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from rq import Queue, Worker, get_current_job

from . import devices
from .bus import BusEvents, channel_of, state_message
from .config import Config
from .errors import BadInput
from .job_lines import JobLines
from .jobs import FINAL_STATES, Job
from .redis_store import RedisJobStore, shared_store
from .runtime import die_with_parent, proc_stat
from .worker_queue import control_channel, queue_name

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

_device: str = "cpu"
"""The device this worker's horses run on (set before the first fork)."""


def take_turn(job_class: str) -> str:
    """An RQ turn, in a work horse: take the next waiting job of ``job_class`` and run it to its end."""
    from .app import build_job_manager, build_sources
    from .runtime import configure_threads

    config = Config()
    config.ensure_default_model = False  # the web process wrote it; a worker only reads the models folder
    devices.use(_device)
    configure_threads()
    store = shared_store(config.redis_url, role="worker")
    try:
        controls = store.redis.pubsub(ignore_subscribe_messages=True)
        controls.subscribe(
            control_channel(store.prefix)
        )  # before taking: no control sent after can be missed
        taken = JobLines(store).take(job_class, store.instance, get_current_job().id)
        if taken is None:
            return "no job was waiting"
        job_id, client = taken
        record = store.load(job_id)
        job = Job.from_record(record)
        job.ended.clear()
        job.add_log(
            "info", f"run by worker {os.environ.get('RQ_WORKER_ID')} (pid {os.getpid()}) on {_device}"
        )
        manager = build_job_manager(
            config,
            build_sources(config),
            BusEvents(store.url, channel_of(store.prefix)),
            store,
            lambda task, *args: threading.Thread(target=task, args=args, daemon=True).start(),
            max_running=1,
            max_queued=0,
            max_queued_per_client=0,
        )
        done = threading.Event()
        threading.Thread(target=_obey, args=(controls, manager, job_id, done), daemon=True).start()
        manager.run_here(job, client)
        done.set()
        return f"job {job_id}: {manager.get(job_id).state}"
    finally:
        store.close()


def _obey(controls: Any, manager: Any, job_id: str, done: threading.Event) -> None:
    """Apply the pause, resume and stop requests for ``job_id`` as they come, until the job has ended."""
    import redis

    while not done.is_set():
        try:
            message = controls.get_message(timeout=0.5)
        except redis.RedisError:  # Redis restarting: redis-py subscribes again once it is back
            time.sleep(0.5)
            continue
        if message is None or message.get("type") != "message":
            continue
        try:
            request = json.loads(message["data"])
            if request.get("job") == job_id:
                getattr(manager, request["action"])(job_id)
        except (ValueError, KeyError, AttributeError, BadInput) as error:
            log.warning("control %r for job %s not applied: %s", message.get("data"), job_id, error)


class ConvlensWorker(Worker):
    """RQ's forking worker, whose horse dies with it and whose dead horse's job is ended, not left running."""

    def __init__(self, *args: Any, store: RedisJobStore, bus: BusEvents, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = store
        self.bus = bus
        self._parent_pid = os.getpid()

    def register_birth(self) -> None:
        """Register, first clearing a namesake that died on this machine without saying so (SIGKILL): a restarted
        worker keeps its name rather than wait out RQ's worker TTL."""
        them = self.connection.hmget(self.key, "hostname", "pid", "death")
        hostname, pid, death = (value.decode() if value else None for value in them)
        if hostname == self.hostname and pid and death is None and not _alive(int(pid)):
            log.warning("worker %s (pid %s) died without deregistering: taking its name", self.name, pid)
            self.connection.hset(self.key, "death", time.time())
        super().register_birth()

    def main_work_horse(self, job, queue) -> None:
        # Killed with the worker (SIGKILL included): its job is then failed by a live process, naming the worker.
        die_with_parent(signal.SIGKILL)
        if os.getppid() != self._parent_pid:
            os._exit(1)  # the worker died before the line above
        super().main_work_horse(job, queue)

    def handle_job_failure(self, job, *args: Any, **kwargs: Any) -> None:
        self._stopped_turn = job.id if self._stopped_job_id == job.id else None  # RQ forgets it in there
        super().handle_job_failure(job, *args, **kwargs)

    def monitor_work_horse(self, job, queue, execution) -> None:
        horse, self._stopped_turn = self.horse_pid, None
        super().monitor_work_horse(job, queue, execution)
        try:
            self._end_orphan(job.id, horse, self._stopped_turn == job.id)
        except BadInput as error:  # Redis unreachable: the horse's heartbeat has stopped, a live process will
            log.warning("could not end the job of turn %s: %s", job.id, error)

    def _end_orphan(self, turn: str, horse: int, stopped: bool) -> None:
        """End the job a dead horse left unfinished: ``stopped`` if a stop killed it, else ``failed``."""
        job_id = JobLines(self.store).taken_in(turn)
        where = job_id and self.store.runner_of(job_id)
        if not where or where[1] in FINAL_STATES:
            return
        instance, state = where[0], where[1]
        record = self.store.load(job_id)
        if record is None:
            return
        if stopped:
            ended = {**record, "state": "stopped", "finished": time.time()}
        else:
            reason = f"the work horse (pid {horse}) of worker {self.name} ended while the job was {state}"
            ended = {
                **record,
                "state": "failed",
                "finished": time.time(),
                "error": {"error": reason, "field": None},
            }
        if self.store.save_if(ended, instance, state):
            self.bus.publish(state_message(Job.from_record(ended).to_json()))


def _alive(pid: int) -> bool:
    """Whether a process of that id runs on this machine (a zombie counts as dead)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def run(config: Config, device: str = "cpu", *, burst: bool = False, name: str | None = None) -> bool:
    """Run a worker on ``device`` until it is told to stop (``burst``: until its queues are empty); whether it
    ran any turn."""
    import redis

    global _device
    if not config.redis_url:
        raise BadInput(
            "CONVLENS_REDIS_URL", "a worker needs the Redis its web processes use (redis://host:port/db)"
        )
    device = devices.parse_device(device)
    devices.check_available(device)
    _device = device
    store = RedisJobStore(config.redis_url, role="worker")
    connection: redis.Redis = redis.Redis.from_url(store.url, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.RedisError as error:
        raise BadInput("CONVLENS_REDIS_URL", f"Redis at {store.where} cannot be reached: {error}") from error
    queues = [
        Queue(queue_name(store.prefix, c), connection=connection) for c in devices.classes_served(device)
    ]
    worker = ConvlensWorker(
        queues,
        connection=connection,
        name=name,
        store=store,
        bus=BusEvents(store.url, channel_of(store.prefix)),
    )
    _warm_imports()
    log.info("convlens worker %s on %s, queues %s", worker.name, device, [q.name for q in queues])
    return worker.work(burst=burst, logging_level="WARNING")


def _warm_imports() -> None:
    """Import what every horse needs once, in the worker (without running torch): each fork starts with it.

    onnx2torch (and the torchvision it imports) took 3.65 s of a horse's 3.9 s to load the default model; imported
    here, a short job in a worker took 0.74 s instead of 2.34 s (``bench/workers.py --preload``). Importing runs
    no parallel torch op, so no thread pool is forked."""
    import onnx2torch  # noqa: F401

    from . import app  # noqa: F401  (the plugins, torch, onnxruntime and the server's modules)
    from .plugins import get_plugin_manager

    get_plugin_manager()
