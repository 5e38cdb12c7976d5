"""Job records in SQLite: what a finished run was, kept across restarts (:class:`convlens.jobs.JobStore`).

One row per job: its JSON (``Job.to_json``) with the columns a list is sorted and filtered by, and its capped
metrics history and log beside it, so that a page of the list never reads them. The results folder stays the
source of truth for a run's files; a row only names them.

One connection shared under a lock: the writes are a few per job (each change of state), far from SQLite's limits,
and one connection cannot see another's half-written state. WAL lets a reader (another process's ``sqlite3``
shell, a backup) read while the server writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    finished REAL,
    record TEXT NOT NULL,
    history TEXT NOT NULL DEFAULT '[]',
    logs TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created, id);
"""

UNFINISHED = ("queued", "running", "paused")


class SqliteJobStore:
    """Job records in one SQLite file (created with its folder on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # A committed change survives the process being killed; only a power cut may lose the newest few.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)

    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the record (``Job.record()``: ``to_json`` plus owner, metrics history and logs)."""
        fields = {k: v for k, v in record.items() if k not in ("metrics_history", "logs")}
        row = (
            record["id"],
            record.get("owner"),
            record["state"],
            record["created"],
            record.get("finished"),
            json.dumps(fields),
            json.dumps(record.get("metrics_history", [])),
            json.dumps(record.get("logs", [])),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def load(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT owner, record, history, logs FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            return None
        owner, record, history, logs = row
        return whole_record(record, owner, history, logs)

    def page(self, limit: int, before: str | None = None, owner: str | None = None) -> list[dict[str, Any]]:
        """Up to ``limit`` records, newest first, after the job ``before`` in that order; without history or logs.

        ``before`` must be a stored job's id (``KeyError`` if not); ``owner`` keeps only that owner's.
        """
        where, args = [], []
        if before is not None:
            with self._lock:
                row = self._db.execute("SELECT created FROM jobs WHERE id = ?", (before,)).fetchone()
            if row is None:
                raise KeyError(before)
            where.append("(created < ? OR (created = ? AND id < ?))")
            args += [row[0], row[0], before]
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        sql = "SELECT owner, record FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        return [{**json.loads(record), "owner": row_owner} for row_owner, record in rows]

    def count(self, owner: str | None = None) -> int:
        with self._lock:
            if owner is None:
                return self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE owner = ?", (owner,)).fetchone()[0]

    def unfinished(self) -> list[dict[str, Any]]:
        """The records still queued, running or paused: after a start-up, those of jobs the last process lost."""
        with self._lock:
            ids = [
                row[0]
                for row in self._db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({', '.join('?' * len(UNFINISHED))})", UNFINISHED
                )
            ]
        return [record for record in map(self.load, ids) if record is not None]

    def finished_before(self, when: float) -> list[str]:
        """The ids of jobs that ended before ``when`` (Unix seconds)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE finished < ?", (when,)).fetchall()
        return [row[0] for row in rows]

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def whole_record(record: str, owner: str | None, history: str, logs: str) -> dict[str, Any]:
    """A job's record as ``Job.record()`` gave it, from the stored JSON texts beside its owner."""
    return {
        **json.loads(record),
        "owner": owner,
        "metrics_history": json.loads(history),
        "logs": json.loads(logs),
    }
