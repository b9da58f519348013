"""Long work (prune, evaluate) as persisted jobs: a SQLite table, one worker thread, progress 0–1.

A job is submitted with a kind and JSON parameters, waits in a bounded in-memory queue, and runs
in the worker thread through the handler registered for its kind. Its state, progress, message,
result and error live in SQLite, so a job outlives the request that started it and the state
survives a restart. Nothing running survives a restart, though: when a new ``JobWorker`` opens
the database, every job still marked queued or running is marked ``interrupted`` and its kind's
cleanup hook removes what it may have left half-written.

The record and its table are in ``store``, the thread that runs jobs in ``worker``.
"""

from backend.jobs.store import (
    CANCELLED,
    FAILED,
    FINISHED_STATES,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    Job,
    JobStore,
)
from backend.jobs.worker import BusyError, JobKind, JobRun, JobWorker, Progress

__all__ = [
    "CANCELLED",
    "FAILED",
    "FINISHED_STATES",
    "INTERRUPTED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "BusyError",
    "Job",
    "JobKind",
    "JobRun",
    "JobStore",
    "JobWorker",
    "Progress",
]
