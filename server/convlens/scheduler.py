"""The fair queue: which waiting job gets the next of the server's ``slots`` (``CONVLENS_MAX_RUNNING_JOBS``).

A slot is the right to do a job's work; at most ``slots`` jobs hold one at once. Jobs waiting for one are queued
per client (:func:`convlens.auth.client_id`), and a free slot goes to the client that holds the fewest slots,
among those to the one served longest ago (a client never served first): one client's backlog cannot starve
another's first job. A client's own jobs go in the order they were queued; a resumed job that had run goes first.

A job gets its thread only with its first slot (``admit`` starts it), not one thread per queued job blocked on a
semaphore in no fair order. A paused job's thread stays, holding the method's generator and state, but gives its
slot back (``release``); resumed, it waits for a slot again like any queued job.

With a ``shared`` count (:class:`SharedWaiting`: Redis, when several web processes share it) the limits count the
jobs waiting in every process, and a job is checked and counted there in one atomic step, so that two processes
cannot both take a client's last place; the turns between clients stay this process's.

Only keys and clients live here; what admitting a job means is the job manager's. ``admit`` is called with no
lock held, on the thread that called :meth:`FairQueue.dispatch`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .errors import BadInput

Admit = Callable[[], None]

WAITING, PARKED, RUNNING = "waiting", "parked", "running"
log = logging.getLogger(__name__)


class SharedWaiting(Protocol):
    """The jobs waiting for a slot (queued or paused) in every process: :class:`convlens.redis_store.RedisJobStore`."""

    def claim_waiting(
        self, job_id: str, client: str, most: int = 0, most_own: int = 0
    ) -> tuple[bool, int, int]: ...

    def leave_waiting(self, job_id: str) -> None: ...


@dataclass
class _Entry:
    client: str
    place: str
    """``WAITING`` in its client's line, ``PARKED`` (paused: neither waiting nor holding a slot) or ``RUNNING``."""
    admit: Admit | None
    """What gives the job its slot's work; ``None`` while it runs."""


def refuse(own: int, total: int, max_queued: int, max_queued_per_client: int) -> None:
    """``BadInput`` (429) naming the limit that ``own`` waiting jobs of a client, ``total`` of all, are at."""
    if max_queued_per_client and own >= max_queued_per_client:
        raise BadInput(
            "max_queued_per_client",
            f"you have {own} jobs waiting for a slot (queued or paused), the most one client may have "
            f"(CONVLENS_MAX_QUEUED_PER_CLIENT={max_queued_per_client}); stop one or wait for one to start",
            status=429,
        )
    if max_queued and total >= max_queued:
        raise BadInput(
            "max_queued_jobs",
            f"{total} jobs are waiting for a slot (queued or paused), the most the server keeps "
            f"(CONVLENS_MAX_QUEUED_JOBS={max_queued}); try again when some have started",
            status=429,
        )


class FairQueue:
    """The slots, the jobs waiting for them (round-robin over clients) and the limits on how many may wait."""

    def __init__(
        self,
        slots: int,
        *,
        max_queued: int = 0,
        max_queued_per_client: int = 0,
        shared: SharedWaiting | None = None,
    ) -> None:
        self.slots = max(1, slots)
        self.shared = shared
        """Where the waiting jobs of every process are counted; ``None``: this process's alone."""
        self.max_queued = max_queued
        """Jobs of all clients waiting for a slot (queued or paused), at most; 0: no limit."""
        self.max_queued_per_client = max_queued_per_client
        """Jobs of one client waiting for a slot (queued or paused), at most; 0: no limit."""
        self._entries: dict[str, _Entry] = {}
        self._lines: dict[str, deque[str]] = {}
        """Each client's waiting keys, in order; a client is here only while it has one."""
        self._served: dict[str, int] = {}
        """The turn at which each client last got a slot, while it has a job here."""
        self._turns = itertools.count()
        self._lock = threading.Lock()

    # -- a job's place ---------------------------------------------------------------------------------------------
    def add(self, key: str, client: str, admit: Admit) -> None:
        """Queue a new job (admitted by a later :meth:`dispatch`); over a limit, ``BadInput`` (429) naming it."""
        with self._lock:
            if self.shared is None:
                self._check_limits(client)
            else:
                added, own, total = self.shared.claim_waiting(
                    key, client, self.max_queued, self.max_queued_per_client
                )
                if not added:
                    self._refuse(own, total)
            self._entries[key] = _Entry(client, WAITING, admit)
            self._lines.setdefault(client, deque()).append(key)

    def hold(self, key: str) -> bool:
        """Take a waiting job out of its line until :meth:`unhold`; whether it was waiting."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.place != WAITING:
                return False
            self._leave_line(key, entry.client)
            entry.place = PARKED
            return True

    def release(self, key: str, admit: Admit) -> bool:
        """A running job gives its slot back (it is paused); ``admit`` gives it one again after :meth:`unhold`."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.place != RUNNING:
                return False
            entry.place, entry.admit = PARKED, admit
            self._shared_count(key, entry.client)
            return True

    def unhold(self, key: str, *, first: bool = False) -> bool:
        """Put a parked job back in its client's line (at its head if ``first``); whether it was parked."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.place != PARKED:
                return False
            line = self._lines.setdefault(entry.client, deque())
            if first:
                line.appendleft(key)
            else:
                line.append(key)
            entry.place = WAITING
            return True

    def withdraw(self, key: str) -> bool:
        """Forget a job that holds no slot (it is stopped); whether it was waiting or parked."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.place == RUNNING:
                return False
            self._forget(key, entry)
            return True

    def done(self, key: str) -> None:
        """Forget an ended job, freeing its slot if it held one (for the next :meth:`dispatch`)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._forget(key, entry)

    def is_waiting(self, key: str) -> bool:
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry.place == WAITING

    # -- handing out slots -----------------------------------------------------------------------------------------
    def dispatch(self) -> None:
        """Give each free slot to the next waiting job, fairly, and admit those jobs (after the lock is let go)."""
        admitted: list[Admit] = []
        with self._lock:
            running = self._running_by_client()
            while self._lines and sum(running.values()) < self.slots:
                # The client holding the fewest slots; of those, the one served longest ago (never: first).
                client = min(self._lines, key=lambda c: (running.get(c, 0), self._served.get(c, -1)))
                key = self._lines[client][0]
                self._leave_line(key, client)
                entry = self._entries[key]
                entry.place = RUNNING
                self._shared_leave(key)
                admitted.append(entry.admit)
                entry.admit = None
                running[client] = running.get(client, 0) + 1
                self._served[client] = next(self._turns)
        for admit in admitted:
            admit()

    # -- inside the lock ---------------------------------------------------------------------------------------------
    def _check_limits(self, client: str) -> None:
        waiting = [entry.client for entry in self._entries.values() if entry.place != RUNNING]
        self._refuse(waiting.count(client), len(waiting))

    def _refuse(self, own: int, total: int) -> None:
        refuse(own, total, self.max_queued, self.max_queued_per_client)

    def _running_by_client(self) -> dict[str, int]:
        running: dict[str, int] = {}
        for entry in self._entries.values():
            if entry.place == RUNNING:
                running[entry.client] = running.get(entry.client, 0) + 1
        return running

    def _leave_line(self, key: str, client: str) -> None:
        line = self._lines[client]
        line.remove(key)
        if not line:
            del self._lines[client]

    def _shared_count(self, key: str, client: str) -> None:
        """Count a paused job waiting again in every process (no limit: a pause is never refused)."""
        if self.shared is not None:
            try:
                self.shared.claim_waiting(key, client)
            except BadInput as error:  # the store unreachable: the job counts for less until it ends
                log.warning("job %s not counted as waiting: %s", key, error)

    def _shared_leave(self, key: str) -> None:
        if self.shared is not None:
            try:
                self.shared.leave_waiting(key)
            except BadInput as error:  # the store unreachable: its record's end takes it out of the count
                log.warning("job %s still counted as waiting: %s", key, error)

    def _forget(self, key: str, entry: _Entry) -> None:
        if entry.place != RUNNING:
            self._shared_leave(key)
        if entry.place == WAITING:
            self._leave_line(key, entry.client)
        del self._entries[key]
        if not any(other.client == entry.client for other in self._entries.values()):
            self._served.pop(entry.client, None)
