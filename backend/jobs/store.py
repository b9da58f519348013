"""Persisted jobs: the SQLite table, the states a job goes through and the ``Job`` record.

State, progress, message, result and error live in SQLite, so a job outlives the request that
started it and its state survives a restart (see ``backend.jobs.worker`` for who runs them).
"""

from __future__ import annotations

import builtins
import json
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backend.errors import NotFoundError
from backend.shared_sqlite import open_shared_database

QUEUED, RUNNING, SUCCEEDED, FAILED, INTERRUPTED, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "interrupted",
    "cancelled",
)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, INTERRUPTED, CANCELLED)
FINISHED_STATES = frozenset({SUCCEEDED, FAILED, INTERRUPTED, CANCELLED})


class StoreClosed(Exception):
    """The jobs database was closed (server shutdown) while a job thread still ran."""


@dataclass
class Job:
    id: str
    kind: str
    state: str
    progress: float  # 0–1
    message: str
    params: dict
    result: dict | None
    error: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": self.progress,
            "message": self.message,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        progress REAL NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        params TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state)",
)
_COLUMNS = (
    "id, kind, state, progress, message, params, result, error, created_at, started_at, finished_at"
)


def _job_from_row(row: tuple) -> Job:
    (
        job_id,
        kind,
        state,
        progress,
        message,
        params,
        result,
        error,
        created_at,
        started_at,
        finished_at,
    ) = row
    return Job(
        job_id,
        kind,
        state,
        float(progress),
        message,
        json.loads(params),
        json.loads(result) if result else None,
        error,
        created_at,
        started_at,
        finished_at,
    )


class JobStore:
    """The jobs table. One connection shared by all threads behind a lock: every statement is a
    point read or a one-row write (microseconds), so the lock is never held for long."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn = open_shared_database(self.path, _SCHEMA, "jobs")
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._conn.close()

    def _execute(self, sql: str, values: tuple = ()) -> list[tuple]:
        with self._lock:
            if self._closed:
                # Shutdown while a job still runs: its last writes are dropped and the next
                # start finds it "running" and marks it interrupted, which is what happened.
                raise StoreClosed(self.path)
            return self._conn.execute(sql, values).fetchall()

    def _update_one(self, sql: str, values: tuple) -> bool:
        """A conditional one-row UPDATE; True when it changed the row (a compare-and-set)."""
        with self._lock:
            if self._closed:
                raise StoreClosed(self.path)
            return self._conn.execute(sql, values).rowcount == 1

    def create(self, kind: str, params: dict) -> Job:
        job = Job(
            uuid.uuid4().hex,
            kind,
            QUEUED,
            0.0,
            "waiting in the queue",
            params,
            None,
            None,
            _now(),
            None,
            None,
        )
        self._execute(
            f"INSERT INTO jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job.id,
                kind,
                job.state,
                0.0,
                job.message,
                json.dumps(params),
                None,
                None,
                job.created_at,
                None,
                None,
            ),
        )
        return job

    def get(self, job_id: str) -> Job:
        rows = self._execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"unknown job {job_id!r}")
        return _job_from_row(rows[0])

    def list(
        self, *, kind: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[Job]:
        clauses, values = [], []
        for column, value in (("kind", kind), ("state", state)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM jobs {where} ORDER BY rowid DESC LIMIT ?",
            (*values, int(limit)),
        )
        return [_job_from_row(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = self._execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state: 0 for state in STATES} | dict(rows)

    def mark_running(self, job_id: str) -> bool:
        """queued -> running; False when the job is no longer queued (it was cancelled)."""
        return self._update_one(
            "UPDATE jobs SET state = ?, started_at = ?, message = ? WHERE id = ? AND state = ?",
            (RUNNING, _now(), "started", job_id, QUEUED),
        )

    def add_params(self, job_id: str, extra: dict) -> None:
        """Record what a running job learned about itself (e.g. the id of the variant it writes),
        so that cleanup after a crash knows it."""
        job = self.get(job_id)
        self._execute(
            "UPDATE jobs SET params = ? WHERE id = ?", (json.dumps({**job.params, **extra}), job_id)
        )

    def cancel_queued(self, job_id: str) -> bool:
        """queued -> cancelled; False when the job has already started."""
        return self._update_one(
            "UPDATE jobs SET state = ?, message = ?, error = ?, finished_at = ? "
            "WHERE id = ? AND state = ?",
            (
                CANCELLED,
                "cancelled before it started",
                "cancelled by a client",
                _now(),
                job_id,
                QUEUED,
            ),
        )

    def set_progress(self, job_id: str, progress: float, message: str) -> None:
        self._execute(
            "UPDATE jobs SET progress = ?, message = ? WHERE id = ? AND state = ?",
            (progress, message, job_id, RUNNING),
        )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        message: str,
        result: dict | None = None,
        error: str | None = None,
    ) -> None:
        progress_sql = ", progress = 1" if state == SUCCEEDED else ""
        self._execute(
            f"UPDATE jobs SET state = ?, message = ?, result = ?, error = ?, finished_at = ?{progress_sql} "
            "WHERE id = ?",
            (
                state,
                message,
                json.dumps(result) if result is not None else None,
                error,
                _now(),
                job_id,
            ),
        )

    def unfinished(self) -> builtins.list[Job]:  # builtins: `list` here is the method above
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN (?, ?) ORDER BY rowid", (QUEUED, RUNNING)
        )
        return [_job_from_row(row) for row in rows]

