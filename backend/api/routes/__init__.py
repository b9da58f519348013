"""One APIRouter per resource, in the order they appear in /docs."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.routes import (
    calibration,
    evaluations,
    experiments,
    export,
    health,
    jobs,
    models,
    neurons,
    nsa,
    nsa_jobs,
    speed,
    studies,
    tables,
    tasks,
    variants,
)


def build_routers(settings) -> list[APIRouter]:
    return [
        health.router,
        models.router,
        calibration.router,
        tasks.router,
        variants.router,
        export.router,
        speed.router,
        jobs.router,
        nsa_jobs.router,
        nsa.build_router(settings.api_max_upload_bytes),
        neurons.router,
        evaluations.router,
        tables.router,
        experiments.router,
        studies.router,
    ]


def register_job_kinds(state) -> None:
    """Teach the job worker how to run each kind of job the routers submit."""
    variants.register_jobs(state)
    evaluations.register_jobs(state)
    nsa_jobs.register_jobs(state)
    speed.register_jobs(state)
    studies.register_jobs(state)
    neurons.register_jobs(state)
