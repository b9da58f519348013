"""Long work (prune, evaluate) as persisted jobs: a SQLite table, one worker thread, progress 0–1.

A job is submitted with a kind and JSON parameters, waits in a bounded in-memory queue, and runs
in the worker thread through the handler registered for its kind. Its state, progress, message,
result and error live in SQLite, so a job outlives the request that started it and the state
survives a restart. Nothing running survives a restart, though: when a new ``JobWorker`` opens
the database, every job still marked queued or running is marked ``interrupted`` and its kind's
cleanup hook removes what it may have left half-written.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backend.errors import ConflictError, NotFoundError, UserError

log = logging.getLogger("prunelens.jobs")

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
# Progress is written at most this often (a job may report thousands of steps); final states
# and message changes are always written.
PROGRESS_WRITE_INTERVAL_S = 0.2

Progress = Callable[[float, str], None]
JobRun = Callable[["Job", Progress], dict]  # (job, progress) -> JSON-able result


class BusyError(UserError):
    """The server is at capacity: the client should come back after ``retry_after`` seconds.

    429 when a bounded queue is full (refused at once), 503 when a wait for the compute lock
    timed out.
    """

    def __init__(self, message: str, *, retry_after: int, status_code: int = 429):
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))
        self.status_code = status_code


class _StoreClosed(Exception):
    """The jobs database was closed (server shutdown) while a job thread still ran."""


class _Cancelled(BaseException):
    """Raised from a running job's progress callback once the job was asked to stop. Not an
    Exception, so that no ``except Exception`` in the job's own code can swallow it (cleanup in
    ``finally`` blocks still runs)."""


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
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = NORMAL")
            for statement in _SCHEMA:
                self._conn.execute(statement)
        except (OSError, sqlite3.DatabaseError) as exc:
            raise UserError(f"jobs database {self.path}: {exc}") from exc
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
                raise _StoreClosed(self.path)
            return self._conn.execute(sql, values).fetchall()

    def _update_one(self, sql: str, values: tuple) -> bool:
        """A conditional one-row UPDATE; True when it changed the row (a compare-and-set)."""
        with self._lock:
            if self._closed:
                raise _StoreClosed(self.path)
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

    def unfinished(self) -> list[Job]:
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state IN (?, ?) ORDER BY rowid", (QUEUED, RUNNING)
        )
        return [_job_from_row(row) for row in rows]


@dataclass(frozen=True)
class JobKind:
    run: JobRun
    # Called for a job of this kind found unfinished after a restart: remove partial output.
    on_interrupted: Callable[[Job], None] | None = None


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


class JobWorker:
    """Runs submitted jobs one at a time in a daemon thread, in submission order."""

    def __init__(self, store: JobStore, *, queue_size: int = 16):
        self.store = store
        self._kinds: dict[str, JobKind] = {}
        # The bound is on jobs *queued in the store*: a job cancelled while it waits frees its
        # place at once, though its id stays in this (unbounded) hand-over queue until skipped.
        self.queue_size = queue_size
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._submit_lock = threading.Lock()  # the capacity check and the insert, together
        self._cancel_lock = threading.Lock()  # cancel requests vs the end of the running job
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.current_job_id: str | None = None
        self._cancel_requested: set[str] = set()  # running jobs asked to stop
        self._recent_seconds: list[float] = []  # durations of the last jobs, for Retry-After

    def register(
        self, kind: str, run: JobRun, on_interrupted: Callable[[Job], None] | None = None
    ) -> None:
        self._kinds[kind] = JobKind(run, on_interrupted)

    # ------------------------------------------------------------------ lifecycle

    def recover(self) -> list[Job]:
        """Mark jobs left queued/running by a previous process as interrupted, and clean up after them."""
        interrupted = []
        for job in self.store.unfinished():
            reason = (
                "the server stopped while this job was running"
                if job.state == RUNNING
                else "the server stopped before this job started"
            )
            kind = self._kinds.get(job.kind)
            if kind and kind.on_interrupted:
                try:
                    kind.on_interrupted(job)
                except Exception:  # cleanup is best effort; the job is marked either way
                    log.exception("cleanup after interrupted job %s failed", job.id)
            self.store.finish(job.id, INTERRUPTED, message=reason, error=reason)
            interrupted.append(self.store.get(job.id))
        return interrupted

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="prunelens-jobs", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop taking jobs. A job that is running is not killed (torch cannot be interrupted
        safely); if the process exits first, the next start marks it interrupted."""
        if self._thread is None:
            return
        self._stopping.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._thread = None

    # ------------------------------------------------------------------ submitting

    def submit(self, kind: str, params: dict) -> Job:
        if kind not in self._kinds:
            raise UserError(f"unknown job kind {kind!r}")
        with self._submit_lock:
            if self.queued_count() >= self.queue_size:
                raise BusyError(
                    f"the job queue is full ({self.queue_size} jobs waiting); try again later",
                    retry_after=self.retry_after(),
                    status_code=429,
                )
            job = self.store.create(kind, params)
            self._queue.put_nowait(job.id)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: at once if it is still queued; a running job stops at its next progress
        report before completion (a prune at the next layer: the dense weights are restored and
        nothing is written), and one that reports completion first ends normally. Cancelling a
        job that has ended is a ConflictError."""
        job = self.store.get(job_id)  # NotFoundError
        if job.state == QUEUED and self.store.cancel_queued(job_id):
            return self.store.get(job_id)
        with self._cancel_lock:  # the running job cannot end between this check and the request
            job = self.store.get(job_id)
            if job.state != RUNNING:
                raise ConflictError(
                    f"job {job_id} has already ended ({job.state}); nothing to cancel"
                )
            self._cancel_requested.add(job_id)
        message = "cancelling at the next step"
        self.store.set_progress(job_id, job.progress, message)
        job.message = message  # the job's own progress may overwrite the stored message meanwhile
        return job

    def queued_count(self) -> int:
        return self.store.counts()[QUEUED]

    def retry_after(self) -> int:
        """Seconds until the queue has probably moved: the mean recent job time, 1 to 300."""
        recent = self._recent_seconds[-8:]
        mean = sum(recent) / len(recent) if recent else 10.0
        return int(min(300, max(1, round(mean))))

    # ------------------------------------------------------------------ running

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job_id = self._queue.get()
            if job_id is None:
                break
            try:
                self._run_one(job_id)
            except _StoreClosed:
                break

    def _run_one(self, job_id: str) -> None:
        try:
            job = self.store.get(job_id)
        except NotFoundError:
            return
        kind = self._kinds[job.kind]
        if not self.store.mark_running(job_id):  # cancelled while it waited in the queue
            return
        self.current_job_id = job_id
        last_write = [0.0, None]  # time, message

        def progress(fraction: float, message: str = "") -> None:
            fraction = min(1.0, max(0.0, float(fraction)))
            if fraction < 1.0 and job_id in self._cancel_requested:  # done is done: not cancelled
                raise _Cancelled
            message = _one_line(message, 200)
            now = time.monotonic()
            if message != last_write[1] or now - last_write[0] >= PROGRESS_WRITE_INTERVAL_S:
                self.store.set_progress(job_id, fraction, message)
                last_write[0], last_write[1] = now, message

        started = time.monotonic()
        try:
            result = kind.run(job, progress)
        except _StoreClosed:
            raise
        except _Cancelled:
            self.store.finish(job_id, CANCELLED, message="cancelled", error="cancelled by a client")
        except UserError as exc:
            self.store.finish(job_id, FAILED, message="failed", error=_one_line(str(exc)))
        except Exception as exc:  # a bug: log the traceback here, show one line to the client
            log.exception("job %s (%s) failed", job_id, job.kind)
            self.store.finish(
                job_id,
                FAILED,
                message="failed",
                error=_one_line(f"internal error: {type(exc).__name__}: {exc}"),
            )
        else:
            self.store.finish(job_id, SUCCEEDED, message="done", result=result or {})
        finally:
            with self._cancel_lock:
                self._cancel_requested.discard(job_id)
            self.current_job_id = None
            self._recent_seconds = [*self._recent_seconds[-7:], time.monotonic() - started]
