"""GET /health: liveness and what the server holds (open without a token)."""

from __future__ import annotations

from fastapi import APIRouter

import backend
from backend.api.schemas import ComputeState, Health
from backend.api.state import State

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="Server status")
async def health(state: State) -> Health:
    default = state.pool.default
    return Health(
        status="ok" if default is not None else "no_model",
        version=backend.__version__,
        default_model=state.pool.default_name,
        loaded_models=state.pool.loaded_names(),
        device=str(default.device) if default is not None else None,
        error=state.startup_error,
        compute=ComputeState(
            busy=state.gate.busy, holder=state.gate.holder, waiting=state.gate.waiting
        ),
        jobs=state.jobs.store.counts(),
        auth=bool(state.settings.api_token),
    )
