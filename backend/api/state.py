"""What one running API server holds: settings, models, the compute lock, jobs and stored results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from backend.api.compute import ComputeGate
from backend.api.model_pool import ModelPool
from backend.api.page_processes import PageProcesses
from backend.api.settings import ApiSettings
from backend.jobs import JobStore, JobWorker
from backend.nsa.results_store import NsaResultStore

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel


@dataclass
class ApiState:
    settings: ApiSettings
    pool: ModelPool
    gate: ComputeGate
    jobs: JobWorker
    nsa_results: NsaResultStore
    startup_error: str | None = None  # why the default model could not be loaded, for /health
    cache: dict = field(default_factory=dict)  # per-server memos: variant listing, results store
    pages: PageProcesses | None = None  # workers that build neuron pages (None: the thread pool)

    @classmethod
    def build(cls, settings: ApiSettings, *, loaded: LoadedModel | None = None) -> ApiState:
        pool = ModelPool(settings, default=loaded, budget_bytes=settings.api_model_memory_mb << 20)
        gate = ComputeGate(
            max_waiting=settings.api_queue_size, wait_seconds=settings.api_wait_seconds
        )
        jobs = JobWorker(JobStore(settings.jobs_db), queue_size=settings.api_job_queue_size)
        nsa_results = NsaResultStore(settings.nsa_db, memory_entries=settings.api_nsa_cache_entries)
        pages = PageProcesses(settings, settings.api_page_processes) if settings.api_page_processes else None
        return cls(settings, pool, gate, jobs, nsa_results, pages=pages)

    def close(self) -> None:
        if self.pages is not None:
            self.pages.close()
        self.jobs.stop()
        self.jobs.store.close()
        self.nsa_results.close()


async def get_state(request: Request) -> ApiState:
    # async: a plain function would make FastAPI run it in the thread pool on every request
    return request.app.state.api


State = Annotated[ApiState, Depends(get_state)]  # the parameter type every route uses
