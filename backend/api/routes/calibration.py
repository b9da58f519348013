"""GET /calibration-sets and GET /samples: the named text sets, and labelled examples of them."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from backend.api.schemas import CalibrationSet
from backend.api.state import State
from backend.errors import NotFoundError, UserError

router = APIRouter(tags=["calibration"])


@router.get(
    "/calibration-sets", response_model=list[CalibrationSet], summary="Calibration text sets"
)
async def list_calibration_sets() -> list[dict]:
    from backend.data.sources import FILE_PREFIX, list_text_sets

    # file:PATH reads the server's disk: offered on the command line, never over HTTP.
    rows = [row for row in list_text_sets() if not row["name"].startswith(FILE_PREFIX)]
    hub = await run_in_threadpool(hub_answers) if any(not row["offline"] for row in rows) else True
    return [{**row, "available": bool(row["offline"] or hub)} for row in rows]


_HUB_CHECK: dict[str, float | bool] = {"at": -1e9, "reachable": False}
HUB_CHECK_EVERY_S = 60.0


def hub_answers() -> bool:
    """Whether the dataset hub answers, asked at most once a minute (an offline check may take
    seconds, and the dashboard lists the sets on every page view)."""
    from backend.evaluation.sources import hub_reachable

    now = time.monotonic()
    if now - float(_HUB_CHECK["at"]) > HUB_CHECK_EVERY_S:
        _HUB_CHECK["reachable"], _HUB_CHECK["at"] = hub_reachable(), now
    return bool(_HUB_CHECK["reachable"])


class Sample(BaseModel):
    text: str = Field(description="The example's text, as NSA receives it.")
    label: int = Field(description="The gold label's index in the dataset.")
    label_text: str = Field(description="The gold label as a word (e.g. 'positive').")


@router.get("/samples", response_model=list[Sample], summary="Labelled examples of a text set")
async def list_samples(
    dataset: str = Query(max_length=64, pattern=r"^[a-z0-9_]+$",
                         description="A set with labelled splits, e.g. sst2 (see /calibration-sets)."),
    n: int = Query(default=10, ge=1, le=200, description="How many examples."),
    seed: int = Query(default=0, ge=0, le=2**31 - 1, description="Seed of the draw (same seed, same examples)."),
) -> list[dict]:
    from backend.data.sources import labelled_examples, list_text_sets

    splits = {row["name"]: row.get("labelled_splits", []) for row in list_text_sets()}
    if not splits.get(dataset):
        labelled = ", ".join(name for name, found in splits.items() if found)
        raise UserError(f"{dataset!r} has no labelled examples; these do: {labelled}")
    return labelled_examples(dataset, n, seed, split=splits[dataset][0])


@router.get("/calibration-advice", summary="Calibration sets ranked for a task, and the ranking's validation")
def read_calibration_advice(
    state: State,
    task: str = Query(max_length=64, pattern=r"^[a-z0-9_]+$", description="An evaluation task, e.g. sst2."),
    model: str | None = Query(default=None, max_length=300, description="Base model; default: the server's."),
) -> dict:
    """The advice `prunelens calibration-advice --task TASK [--validate]` stored: ``ranking``
    (set, proxy score, rank, and with validation the measured accuracy and its 95% interval),
    ``validation`` (Spearman rho and exact p over all sets and without the task's own set) and
    ``reading``, the sentence to show next to it."""
    from backend.evaluation.registry import get_task
    from backend.guided.advice import load_advice

    get_task(task)  # unknown task -> 400
    name = state.pool.allowed_reference(model)
    advice = load_advice(name, task, state.settings)
    if advice is None:
        raise NotFoundError(f"no calibration advice for {task} on {name} yet: run "
                            f"`prunelens calibration-advice --task {task} --validate`")
    return advice
