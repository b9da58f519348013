"""GET /models: the embedded default, converted models in the cache, and what is loaded now."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from backend.api.schemas import ModelInfo
from backend.api.state import State

router = APIRouter(tags=["models"])


@router.get("/models", response_model=list[ModelInfo], summary="Models the server can use")
async def list_models_endpoint(state: State) -> list[ModelInfo]:
    from backend.models.loader import list_models

    loaded = state.pool.loaded_names()
    default_name = state.pool.default_name
    rows = [
        ModelInfo(
            name=row["name"],
            source=row["source"],
            converted=row["converted"],
            default=row["name"] == default_name,
            loaded=row["name"] in loaded,
        )
        for row in await run_in_threadpool(list_models, state.settings)  # reads the cache folder
    ]
    listed = {row.name for row in rows}
    for name in loaded:  # an injected or hub model is in memory without being in the cache
        if name not in listed:
            source = (
                getattr(state.pool.default, "source", "local") if name == default_name else "hub"
            )
            rows.append(
                ModelInfo(
                    name=name,
                    source=source,
                    converted=True,
                    default=name == default_name,
                    loaded=True,
                )
            )
    return rows
