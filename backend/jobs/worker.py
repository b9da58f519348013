"""Runs persisted jobs: one worker thread, a bounded queue, cancellation, recovery after a restart.

A job is submitted with a kind and JSON parameters, waits in a bounded in-memory queue, and runs
in the worker thread through the handler registered for its kind. Nothing running survives a
restart: when a new ``JobWorker`` opens the database, every job still marked queued or running
is marked ``interrupted`` and its kind's cleanup hook removes what it may have left half-written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.errors import ConflictError, NotFoundError, UserError
from backend.jobs.store import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobStore,
    StoreClosed,
)

log = logging.getLogger("prunelens.jobs")

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


class _Cancelled(BaseException):
    """Raised from a running job's progress callback once the job was asked to stop. Not an
    Exception, so that no ``except Exception`` in the job's own code can swallow it (cleanup in
    ``finally`` blocks still runs)."""


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
            except StoreClosed:
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
        last_write_time = 0.0  # when progress was last written, and its message
        last_message: str | None = None

        def progress(fraction: float, message: str = "") -> None:
            nonlocal last_write_time, last_message
            fraction = min(1.0, max(0.0, float(fraction)))
            if fraction < 1.0 and job_id in self._cancel_requested:  # done is done: not cancelled
                raise _Cancelled
            message = _one_line(message, 200)
            now = time.monotonic()
            if message != last_message or now - last_write_time >= PROGRESS_WRITE_INTERVAL_S:
                self.store.set_progress(job_id, fraction, message)
                last_write_time, last_message = now, message

        started = time.monotonic()
        try:
            result = kind.run(job, progress)
        except StoreClosed:
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
