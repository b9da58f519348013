"""/jobs: the state of long operations (prune, evaluate), polled or streamed as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

from fastapi import APIRouter, Depends, Path, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from backend.api.schemas import JOB_ID_PATTERN, JobInfo, JobStateName
from backend.api.state import ApiState, get_state
from backend.jobs import Job

router = APIRouter(tags=["jobs"])

EVENT_POLL_SECONDS = 0.25  # the stream reads the job's row this often and sends what changed


def existing_job(
    job_id: str = Path(pattern=JOB_ID_PATTERN, description="Job id (32 hex digits)."),
    state: ApiState = Depends(get_state),
) -> Job:
    return state.jobs.store.get(job_id)  # NotFoundError -> 404, before any stream starts


@router.get("/jobs", response_model=list[JobInfo], summary="Recent jobs, newest first")
async def list_jobs(
    state: ApiState = Depends(get_state),
    kind: str | None = Query(default=None, max_length=32, description="Only jobs of this kind ('prune', 'evaluate')."),
    job_state: JobStateName | None = Query(default=None, alias="state", description="Only jobs in this state."),
    limit: int = Query(default=100, ge=1, le=1000, description="At most this many jobs."),
) -> list[dict]:
    return [job.to_json() for job in state.jobs.store.list(kind=kind, state=job_state, limit=limit)]


@router.get("/jobs/{job_id}", response_model=JobInfo, summary="A job's state, progress and result")
async def read_job(job: Job = Depends(existing_job)) -> dict:
    return job.to_json()


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse,
            summary="Server-sent events: the job each time its state, progress or message changes")
async def job_events(job: Job = Depends(existing_job),
                     state: ApiState = Depends(get_state)) -> AsyncIterable[JobInfo]:
    """Each event (type `job`) carries the whole job as JSON; the stream ends after the event
    with a final state (succeeded, failed, interrupted)."""
    last_seen = None
    sequence = 0
    while True:
        snapshot = (job.state, job.progress, job.message)
        if snapshot != last_seen:
            sequence += 1
            yield ServerSentEvent(data=job.to_json(), event="job", id=str(sequence))
            last_seen = snapshot
        if job.finished:
            return
        await asyncio.sleep(EVENT_POLL_SECONDS)
        job = state.jobs.store.get(job.id)
