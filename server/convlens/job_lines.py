"""The jobs waiting for a worker, in Redis: one line per client and device class, served fairly.

A web process that hands its jobs to workers (``CONVLENS_JOB_QUEUE=rq``) puts each new job at the end of its
client's line and enqueues one RQ *turn* (:func:`convlens.worker.take_turn`) on its class's RQ queue. A turn names
no job: the worker that runs it takes, in one Lua step, the head of the line of the client running the fewest jobs,
of those the one served longest ago (a client never served first), as the in-process
:class:`convlens.scheduler.FairQueue` does. So one client's hundred jobs cannot hold back another's first one, in
whichever web process each was sent, and stopping or pausing a queued job only takes it out of its line (its turn
then takes another job, or none).

Keys, under the store's prefix: ``line:<class>:<client>`` (a list of job ids), ``ready:<class>`` (the clients
with a non-empty line), ``turn:<rq job id>`` (the job a turn took), ``running:<client>`` (a set of the ids a worker runs; an ended job leaves it when its end
is saved, see :meth:`convlens.redis_store.RedisJobStore.save`), ``served`` (a hash of client to the turn it was
last served at) and ``turns`` (the counter).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .redis_store import RedisJobStore

QUEUED_INSTANCE = "queue"
"""The ``instance`` of a job waiting in a line: no process runs it, so no process's death loses it."""

TAKE = """
-- ARGV: prefix, class, the taking worker's instance, the RQ job (turn) that takes it.
local prefix, class = ARGV[1], ARGV[2]
local ready = prefix .. 'ready:' .. class
local best, best_running, best_served = nil, 0, 0
for _, client in ipairs(redis.call('SMEMBERS', ready)) do
  local running = redis.call('SCARD', prefix .. 'running:' .. client)
  local served = tonumber(redis.call('HGET', prefix .. 'served', client) or '-1')
  if best == nil or running < best_running or (running == best_running and served < best_served) then
    best, best_running, best_served = client, running, served
  end
end
if best == nil then return false end
local line = prefix .. 'line:' .. class .. ':' .. best
local id = redis.call('LPOP', line)
if redis.call('LLEN', line) == 0 then redis.call('SREM', ready, best) end
if not id then return false end
redis.call('SADD', prefix .. 'running:' .. best, id)
redis.call('HSET', prefix .. 'served', best, redis.call('INCR', prefix .. 'turns'))
redis.call('HSET', prefix .. 'job:' .. id, 'instance', ARGV[3], 'rq_job', ARGV[4])
redis.call('SET', prefix .. 'turn:' .. ARGV[4], id, 'EX', 604800)
local waiting_client = redis.call('HGET', prefix .. 'waiting', id)
if waiting_client then
  redis.call('HDEL', prefix .. 'waiting', id)
  redis.call('SREM', prefix .. 'waiting:' .. waiting_client, id)
end
return {id, best}
"""
LEAVE_LINE = """
-- ARGV: prefix, class, client, id. Whether the id was in the line (a worker has not taken it).
local line = ARGV[1] .. 'line:' .. ARGV[2] .. ':' .. ARGV[3]
local removed = redis.call('LREM', line, 0, ARGV[4])
if redis.call('LLEN', line) == 0 then redis.call('SREM', ARGV[1] .. 'ready:' .. ARGV[2], ARGV[3]) end
return removed
"""


class JobLines:
    """The clients' lines of queued jobs per device class, in the Redis of ``store``."""

    def __init__(self, store: RedisJobStore) -> None:
        self.store = store

    def join(self, job_id: str, client: str, job_class: str, *, first: bool = False) -> None:
        """Put the job at the end of its client's line (at the head if ``first``: a resumed job)."""
        line, ready = self.store.key("line", job_class, client), self.store.key("ready", job_class)

        def push() -> None:
            pipe = self.store.redis.pipeline(transaction=True)
            (pipe.lpush if first else pipe.rpush)(line, job_id)
            pipe.sadd(ready, client)
            pipe.execute()

        self.store.call(push)

    def leave(self, job_id: str, client: str, job_class: str) -> bool:
        """Take the job out of its line; whether it was there (``False``: a worker took it first)."""
        args = (self.store.prefix, job_class, client, job_id)
        return bool(self.store.call(lambda: self.store.redis.eval(LEAVE_LINE, 0, *args)))

    def take(self, job_class: str, instance: str, turn: str) -> tuple[str, str] | None:
        """The next job of ``job_class`` for the worker ``instance`` (now its runner) in the RQ job ``turn``, with
        its client; ``None`` when no line of that class has one."""
        args = (self.store.prefix, job_class, instance, turn)
        taken = self.store.call(lambda: self.store.redis.eval(TAKE, 0, *args))
        return (taken[0], taken[1]) if taken else None

    def taken_in(self, turn: str) -> str | None:
        """The job the RQ job ``turn`` took, if any (kept a week)."""
        return self.store.call(lambda: self.store.redis.get(self.store.key("turn", turn)))
