"""Job records in Redis: one store that several web processes share (:class:`convlens.jobs.JobStore`).

Keys, all under ``prefix`` (``convlens:`` unless the URL's ``?prefix=`` names another, so two servers can share one
Redis):

- ``job:<id>``: a hash of the record's JSON (``record``, without history and logs), ``history``, ``logs``,
  ``owner``, ``created``, ``state`` and, while the job is unfinished, ``instance``: the process that runs it
  (:data:`~convlens.job_lines.QUEUED_INSTANCE` while it waits in a line for a worker). A job handed to workers also
  has ``client`` and ``class``, its line's (:mod:`convlens.job_lines`).
- ``jobs`` and ``owner:<owner>``: sorted sets of every job (of one owner's) by :func:`order_key`, all of score 0
  so that Redis orders them by their bytes: ``(created, id)``, as SQLite's index does.
- ``finished``: ids scored by when they ended; ``unfinished``: the set of queued, running and paused ids.
- ``instance:<name>``: each live process's heartbeat, a key that expires unless refreshed.
- ``waiting`` (a hash of id to client) and ``waiting:<client>`` (a set of ids): the jobs of every process that wait
  for a slot (queued or paused, not running), which the queue limits count (:meth:`RedisJobStore.claim_waiting`).

A record and its index entries change in one MULTI/EXEC transaction, watched so that a concurrent save of the
same job cannot leave an index entry behind. A job left unfinished by a process whose heartbeat expired is lost:
:meth:`RedisJobStore.reap` fails it naming that process, and ``unfinished()`` lists only such jobs, so that a
starting process's recovery never fails a job another live process is running.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from flask import has_request_context
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import BadInput
from .job_db import whole_record
from .job_lines import QUEUED_INSTANCE

log = logging.getLogger(__name__)

UNFINISHED = ("queued", "running", "paused")
DEFAULT_PREFIX = "convlens:"
HEARTBEAT_TTL_S = 10.0
"""Seconds a process's heartbeat lives unless refreshed: how long a dead process's jobs stay ``running``, at most
(plus one :data:`REAP_EVERY_S`). Long beside a refresh so that a busy process is never taken for a dead one."""
BEAT_EVERY_S = 2.0
REAP_EVERY_S = 2.5
SAVE_PATIENCE_S = 30.0
"""How long a job's own thread retries saving its record while Redis is unreachable (a restart) before failing;
a request fails at once with a 503."""
T = TypeVar("T")

CLAIM = """
-- KEYS: the waiting hash, the client's waiting set; ARGV: id, client, most of all (0: none), most of one (0: none).
-- Counts and adds in one step, so that two processes cannot both take a client's last place.
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, 0, 0} end
local own, total = redis.call('SCARD', KEYS[2]), redis.call('HLEN', KEYS[1])
local most, most_own = tonumber(ARGV[3]), tonumber(ARGV[4])
if (most_own > 0 and own >= most_own) or (most > 0 and total >= most) then return {0, own, total} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return {1, own, total}
"""
LEAVE = """
-- KEYS: the waiting hash; ARGV: id, the prefix of the clients' waiting sets.
local client = redis.call('HGET', KEYS[1], ARGV[1])
if client then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('SREM', ARGV[2] .. client, ARGV[1])
end
return 0
"""


class StoreUnavailable(BadInput):
    """Redis cannot be reached: the request is answered 503 naming the store, and may be tried again."""

    status = 503


def order_key(created: float, job_id: str) -> str:
    """A member whose byte order is ``(created, id)``'s: the float's bits made sortable, in hex, then the id."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", created))
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63  # negatives reversed, below positives
    return f"{bits:016x}:{job_id}"


def process_name(instance: str | None) -> str:
    """``"worker <instance>"`` or ``"web process <instance>"``, as a job's error names the process it lost."""
    if instance is None:
        return "process (unknown)"
    return f"{'worker' if instance.startswith('worker:') else 'web process'} {instance}"


def parse_url(url: str) -> tuple[str, str]:
    """``redis://host:port/db?prefix=name:`` split into the URL Redis is given and the key prefix."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
    rest = "&".join(f"{key}={value}" for key, values in query.items() for value in values)
    return urlunsplit(parts._replace(query=rest)), prefix


class RedisJobStore:
    """Job records in Redis at ``url`` (its ``?prefix=`` a key prefix), shared by every process given the same."""

    def __init__(self, url: str, heartbeat_ttl_s: float = HEARTBEAT_TTL_S, role: str = "web") -> None:
        redis_url, self.prefix = parse_url(url)
        self.url = redis_url
        """Redis' URL without the prefix (for RQ's and Socket.IO's connections to the same Redis)."""
        parts = urlsplit(redis_url)
        self.where = f"{parts.hostname}:{parts.port or 6379}"
        """Redis' address, for messages (without a password the URL may hold)."""
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.instance = f"{role}:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        """This process (``web:`` or ``worker:``, host, pid, a random part): the ``instance`` of the unfinished jobs
        it saves, and the name of its heartbeat."""
        self.redis = redis.Redis.from_url(
            redis_url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=10,
            health_check_interval=5,
            # A few quick tries hide a dropped connection; a Redis that is down answers a request 503 at once.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 3),
        )
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the JobStore --------------------------------------------------------------------------------
    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the record (``Job.record()``), its index entries with it."""
        self._write(record)

    def save_queued(self, record: dict[str, Any], client: str, job_class: str) -> None:
        """Save a new job that waits for a worker in ``client``'s line of ``job_class``: no process runs it."""
        self._write(record, instance=QUEUED_INSTANCE, line=(client, job_class))

    def save_if(self, record: dict[str, Any], instance: str | None, state: str) -> bool:
        """Save ``record`` only if the stored job is still ``state`` and run by ``instance``; whether saved."""
        return self._write(record, expect=(instance, state))

    def _write(
        self,
        record: dict[str, Any],
        expect: tuple[str | None, str] | None = None,
        instance: str | None = None,
        line: tuple[str, str] | None = None,
    ) -> bool:
        """Save ``record``; with ``expect`` (instance, state), only if the stored job still has them; ``instance``
        names its runner (else the stored one, else this process); ``line`` is its (client, class). Whether
        saved."""
        job_id, owner, state = record["id"], record.get("owner"), record["state"]
        fields = {k: v for k, v in record.items() if k not in ("metrics_history", "logs")}
        values = {
            "record": json.dumps(fields),
            "history": json.dumps(record.get("metrics_history", [])),
            "logs": json.dumps(record.get("logs", [])),
            "created": repr(float(record["created"])),
            "state": state,
        }
        key = self.key("job", job_id)
        member = order_key(record["created"], job_id)

        def write(pipe: redis.client.Pipeline) -> bool:
            old_owner, old_created, had_owner, old_instance, old_state, client, job_class, turn = pipe.hmget(
                key, "owner", "created", "has_owner", "instance", "state", "client", "class", "rq_job"
            )
            pipe.multi()
            if expect is not None and (old_instance, old_state) != expect:
                return False
            if line is not None:
                client, job_class = line
            if old_created is not None:
                old_member = order_key(float(old_created), job_id)
                pipe.zrem(self.key("jobs"), old_member)
                if had_owner:
                    pipe.zrem(self.key("owner", old_owner), old_member)
            pipe.delete(key)
            pipe.hset(key, mapping=values)
            if client is not None:
                pipe.hset(key, mapping={"client": client, "class": job_class})
            if turn is not None:
                pipe.hset(key, "rq_job", turn)
            pipe.zadd(self.key("jobs"), {member: 0})
            if owner is not None:
                pipe.hset(key, mapping={"owner": owner, "has_owner": "1"})
                pipe.zadd(self.key("owner", owner), {member: 0})
            if record.get("finished") is not None:
                pipe.zadd(self.key("finished"), {job_id: float(record["finished"])})
            else:
                pipe.zrem(self.key("finished"), job_id)
            if state in UNFINISHED:
                # The process that took the job runs it to its end: a pause asked of another keeps it that one's.
                pipe.hset(key, "instance", instance or old_instance or self.instance)
                pipe.sadd(self.key("unfinished"), job_id)
            else:
                pipe.srem(self.key("unfinished"), job_id)
                if client is not None:  # a worker's job runs no more (job_lines' fair turns count them)
                    pipe.srem(self.key("running", client), job_id)
                # An ended job waits no more, also one whose process died before it could say so.
                pipe.eval(LEAVE, 1, self.key("waiting"), job_id, self.key("waiting", ""))
            return True

        return self.call(lambda: self.redis.transaction(write, key, value_from_callable=True), patient=True)

    def load(self, job_id: str) -> dict[str, Any] | None:
        found = self.call(
            lambda: self.redis.hmget(self.key("job", job_id), "record", "owner", "history", "logs")
        )
        record, owner, history, logs = found
        if record is None:
            return None
        return whole_record(record, owner, history, logs)

    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` records, newest first, after the job ``before`` in that order; without history or logs.

        ``before`` must be a stored job's id (``KeyError`` if not); ``owner`` keeps only that owner's.
        """
        top = "+"
        if before is not None:
            created = self.call(lambda: self.redis.hget(self.key("job", before), "created"))
            if created is None:
                raise KeyError(before)
            top = "(" + order_key(float(created), before)
        index = self.key("jobs") if owner is None else self.key("owner", owner)
        members = self.call(lambda: self.redis.zrevrangebylex(index, top, "-", start=0, num=limit))
        ids = [member.split(":", 1)[1] for member in members]

        def read() -> list[list[str | None]]:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hmget(self.key("job", job_id), "record", "owner")
            return pipe.execute()

        rows = self.call(read)
        # A job deleted between the two reads is left out.
        return [
            {**json.loads(record), "owner": row_owner} for record, row_owner in rows if record is not None
        ]

    def count(self, owner: str | None = None) -> int:
        index = self.key("jobs") if owner is None else self.key("owner", owner)
        return self.call(lambda: self.redis.zcard(index))

    def unfinished(self) -> list[dict[str, Any]]:
        """The records still queued, running or paused whose process is gone (its heartbeat expired): those
        lost; a live process's jobs are its own to finish."""
        return [record for record, _ in self._lost()]

    def finished_before(self, when: float) -> list[str]:
        """The ids of jobs that ended before ``when`` (Unix seconds)."""
        return self.call(lambda: self.redis.zrangebyscore(self.key("finished"), "-inf", f"({when!r}"))

    def delete(self, job_id: str) -> None:
        key = self.key("job", job_id)

        def remove(pipe: redis.client.Pipeline) -> None:
            owner, created, had_owner = pipe.hmget(key, "owner", "created", "has_owner")
            pipe.multi()
            if created is not None:
                member = order_key(float(created), job_id)
                pipe.zrem(self.key("jobs"), member)
                if had_owner:
                    pipe.zrem(self.key("owner", owner), member)
            pipe.zrem(self.key("finished"), job_id)
            pipe.srem(self.key("unfinished"), job_id)
            pipe.delete(key)

        self.call(lambda: self.redis.transaction(remove, key))

    def runner_of(self, job_id: str) -> tuple[str | None, str, str, str] | None:
        """Who runs the job (its ``instance``), its state, and its line's client and class; ``None``: unknown."""
        instance, state, client, job_class = self.call(
            lambda: self.redis.hmget(self.key("job", job_id), "instance", "state", "client", "class")
        )
        return None if state is None else (instance, state, client, job_class)

    # -- the jobs waiting for a slot, in every process ------------------------------------------------
    def claim_waiting(
        self, job_id: str, client: str, most: int = 0, most_own: int = 0
    ) -> tuple[bool, int, int]:
        """Count ``job_id`` waiting for a slot, unless ``client`` already has ``most_own`` waiting or all clients
        ``most`` (0: no limit): whether it was counted, with the client's and everyone's count before."""
        keys = (self.key("waiting"), self.key("waiting", client))
        added, own, total = self.call(
            lambda: self.redis.eval(CLAIM, 2, *keys, job_id, client, most, most_own)
        )
        return bool(added), int(own), int(total)

    def leave_waiting(self, job_id: str) -> None:
        """``job_id`` waits no more (it got a slot, or was stopped)."""
        self.call(lambda: self.redis.eval(LEAVE, 1, self.key("waiting"), job_id, self.key("waiting", "")))

    # -- processes -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Beat this process's heartbeat now and every :data:`BEAT_EVERY_S`, failing lost jobs now and as it goes."""
        self._beat()
        for job_id in self.reap():
            log.warning("job %s failed: the process that ran it is gone", job_id)
        self._thread = threading.Thread(target=self._keep_beating, name="convlens-heartbeat", daemon=True)
        self._thread.start()

    def reap(self) -> list[str]:
        """Fail the unfinished jobs whose process's heartbeat expired, naming that process; their ids."""
        reaped = []
        for record, instance in self._lost():
            state = record["state"]
            record = {
                **record,
                "state": "failed",
                "finished": time.time(),
                "error": {
                    "error": f"the {process_name(instance)} that ran this job is gone "
                    f"(its heartbeat stopped while the job was {state})",
                    "field": None,
                },
            }
            # Only if no one (the process itself, after a stall, or another reaper) saved the job meanwhile.
            if self._write(record, expect=(instance, state)):
                reaped.append(record["id"])
        return reaped

    def close(self) -> None:
        """End the heartbeat: this process's unfinished jobs end with it, and another process may fail them."""
        self._closed.set()
        try:
            self.redis.delete(self.key("instance", self.instance))
        except redis.RedisError:
            pass  # it expires by itself
        self.redis.close()

    def _alive(self, instances: set[str]) -> set[str]:
        """Those of ``instances`` whose heartbeat is there."""
        ordered = sorted(instances)
        pipe = self.redis.pipeline(transaction=False)
        for instance in ordered:
            pipe.exists(self.key("instance", instance))
        return {instance for instance, exists in zip(ordered, pipe.execute(), strict=True) if exists}

    def _lost(self) -> list[tuple[dict[str, Any], str | None]]:
        """The unfinished records whose process's heartbeat is gone, each with that process's name."""
        ids = sorted(self.call(lambda: self.redis.smembers(self.key("unfinished"))))

        def instances() -> list[str | None]:
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids:
                pipe.hget(self.key("job", job_id), "instance")
            return pipe.execute()

        owners = self.call(instances)
        alive = self.call(lambda: self._alive({instance for instance in owners if instance}))
        lost = []
        for job_id, instance in zip(ids, owners, strict=True):
            if instance in alive or instance == QUEUED_INSTANCE:
                continue
            record = self.load(job_id)
            if record is not None and record["state"] in UNFINISHED:
                lost.append((record, instance))
        return lost

    def _beat(self) -> None:
        about = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "beat": time.time()})
        self.redis.set(self.key("instance", self.instance), about, px=int(self.heartbeat_ttl_s * 1000))

    def _keep_beating(self) -> None:
        last_reap = time.monotonic()
        while not self._closed.wait(BEAT_EVERY_S):
            try:
                self._beat()
                if time.monotonic() - last_reap >= REAP_EVERY_S:
                    last_reap = time.monotonic()
                    for job_id in self.reap():
                        log.warning("job %s failed: the process that ran it is gone", job_id)
            except (redis.RedisError, BadInput) as error:  # Redis restarting: the next beat tries again
                log.warning("job store heartbeat: %s", error)
                # Other processes' heartbeats may have expired meanwhile, theirs as well as this one's: no reaping
                # until each live one has had a whole TTL to beat again.
                last_reap = time.monotonic() + self.heartbeat_ttl_s

    # -- helpers -------------------------------------------------------------------------------------
    def key(self, *parts: str) -> str:
        """A key under this store's prefix: ``key("job", id)`` is ``<prefix>job:<id>``."""
        return self.prefix + ":".join(parts)

    def call(self, action: Callable[[], T], patient: bool = False) -> T:
        """``action``'s answer; Redis unreachable is :class:`StoreUnavailable` (a 503), after up to
        :data:`SAVE_PATIENCE_S` of tries when ``patient`` outside a request (a job's thread saving its state)."""
        deadline = time.monotonic() + (SAVE_PATIENCE_S if patient and not has_request_context() else 0)
        while True:
            try:
                return action()
            except (redis.ConnectionError, redis.TimeoutError) as error:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        "store", f"the job store (Redis at {self.where}) cannot be reached: {error}"
                    ) from error
                time.sleep(0.5)


def shared_store(url: str, role: str = "web") -> RedisJobStore:
    """The store of a web process: its heartbeat started, and the jobs of processes already gone failed now."""
    store = RedisJobStore(url, role=role)
    try:
        store.start()
    except redis.RedisError as error:
        raise StoreUnavailable(
            "CONVLENS_REDIS_URL", f"the job store (Redis at {store.where}) cannot be reached: {error}"
        ) from error
    return store
