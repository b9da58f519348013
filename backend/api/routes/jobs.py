"""/jobs: the state of long operations (prune, evaluate), polled or streamed as server-sent events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from backend.api.schemas import JOB_ID_PATTERN, JobInfo, JobStateName
from backend.api.state import State
from backend.jobs import Job

router = APIRouter(tags=["jobs"])

EVENT_POLL_SECONDS = 0.25  # the stream reads the job's row this often and sends what changed


async def existing_job(
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="Job id (32 hex digits).")],
    state: State,
) -> Job:
    # async on purpose: the row read takes microseconds, while a sync dependency would hop to the
    # thread pool and wait for the GIL there (it tripled this endpoint's latency under load).
    return state.jobs.store.get(job_id)  # NotFoundError -> 404, before any stream starts


ExistingJob = Annotated[Job, Depends(existing_job)]


@router.get("/jobs", response_model=list[JobInfo], summary="Recent jobs, newest first")
async def list_jobs(
    state: State,
    kind: Annotated[
        str | None,
        Query(max_length=32, description="Only jobs of this kind ('prune', 'evaluate')."),
    ] = None,
    job_state: Annotated[
        JobStateName | None, Query(alias="state", description="Only jobs in this state.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many jobs.")] = 100,
) -> list[dict]:
    return [job.to_json() for job in state.jobs.store.list(kind=kind, state=job_state, limit=limit)]


@router.get("/jobs/{job_id}", response_model=JobInfo, summary="A job's state, progress and result")
async def read_job(job: ExistingJob) -> dict:
    return job.to_json()


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    summary="Server-sent events: the job each time its state, progress or message changes",
)
async def job_events(job: ExistingJob, state: State) -> AsyncIterable[JobInfo]:
    """Each event (type `job`) carries the whole job as JSON; the stream ends after the event
    with a final state (succeeded, failed, interrupted, cancelled)."""
    last_seen = None
    sequence = 0
    while True:
        snapshot = (job.state, job.progress, job.message)
        if snapshot != last_seen:
            sequence += 1
            # The declared JobInfo documents each event's data; FastAPI sends the events as given.
            yield ServerSentEvent(data=job.to_json(), event="job", id=str(sequence))  # type: ignore[misc]
            last_seen = snapshot
        if job.finished:
            return
        await asyncio.sleep(EVENT_POLL_SECONDS)
        job = state.jobs.store.get(job.id)


@router.post(
    "/jobs/{job_id}/cancel",
    response_model=JobInfo,
    summary="Cancel a queued or running job",
    responses={409: {"description": "The job has already ended."}},
)
async def cancel_job(job: ExistingJob, state: State) -> dict:
    """A queued job is cancelled at once. A running job stops at its next progress step (a prune
    after the layer it is on: the dense weights are restored and no variant is written); until
    then it shows `running` with the message 'cancelling at the next step'."""
    return state.jobs.cancel(job.id).to_json()
