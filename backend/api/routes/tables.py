"""GET /tables/{kind}: the paper's views of the results store (task x calibration, ...), as JSON."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Path, Query

from backend.api.routes.evaluations import results_store
from backend.api.schemas import ResultsTable
from backend.api.state import ApiState, get_state
from backend.evaluation.tables import TABLE_KINDS, build_table

router = APIRouter(tags=["tables"])

TableKindName = Literal[tuple(TABLE_KINDS)]  # type: ignore[valid-type]
KINDS_HELP = "; ".join(f"{name}: {kind.description}" for name, kind in TABLE_KINDS.items())


@router.get("/tables/{kind}", response_model=ResultsTable,
            summary="A results table: mean metric per cell, missing cells null")
def read_table(
    kind: TableKindName = Path(description=KINDS_HELP),
    metric: str = Query(default="acc,none", min_length=1, max_length=64, description="lm-eval metric key."),
    model: str | None = Query(default=None, max_length=300, description="Only results of this base model."),
    task: str | None = Query(default=None, max_length=64, description="Only this task (required by model-calibration)."),
    method: str | None = Query(default=None, max_length=32, description="Only this pruning method."),
    calibration: str | None = Query(default=None, max_length=64, description="Only this calibration set."),
    sparsity: str | None = Query(default=None, max_length=32, description="Only this sparsity label."),
    seqlen: str | None = Query(default=None, max_length=16, description="Only this calibration sequence length."),
    state: ApiState = Depends(get_state),
) -> dict:
    results = results_store(state).results(base_model=model, task=task)
    table = build_table(kind, results, metric=metric, model=model, task=task, method=method,
                        calibration=calibration, sparsity=sparsity, seqlen=seqlen)
    return table.to_json()
