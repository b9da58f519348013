"""GET /tables/{kind}: the paper's views of the results store (task x calibration, ...), as JSON."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query

from backend.api.evaluation_schemas import ResultsTable
from backend.api.routes.evaluations import results_store
from backend.api.state import State
from backend.evaluation.tables import TABLE_KINDS, build_table

router = APIRouter(tags=["tables"])

TableKindName = Literal[tuple(TABLE_KINDS)]  # type: ignore[valid-type]
KINDS_HELP = "; ".join(f"{name}: {kind.description}" for name, kind in TABLE_KINDS.items())


@router.get(
    "/tables/{kind}",
    response_model=ResultsTable,
    summary="A results table: mean metric per cell, missing cells null",
)
def read_table(
    state: State,
    kind: Annotated[TableKindName, Path(description=KINDS_HELP)],  # type: ignore[valid-type]
    metric: Annotated[
        str, Query(min_length=1, max_length=64, description="lm-eval metric key.")
    ] = "acc,none",
    model: Annotated[
        str | None, Query(max_length=300, description="Only results of this base model.")
    ] = None,
    task: Annotated[
        str | None,
        Query(max_length=64, description="Only this task (required by model-calibration)."),
    ] = None,
    method: Annotated[
        str | None, Query(max_length=32, description="Only this pruning method.")
    ] = None,
    calibration: Annotated[
        str | None, Query(max_length=64, description="Only this calibration set.")
    ] = None,
    sparsity: Annotated[
        str | None, Query(max_length=32, description="Only this sparsity label.")
    ] = None,
    seqlen: Annotated[
        str | None, Query(max_length=16, description="Only this calibration sequence length.")
    ] = None,
    num_fewshot: Annotated[
        int, Query(ge=0, le=64, description="Only results scored with this many demonstrations.")
    ] = 0,
) -> dict:
    store = results_store(state)
    results = store.results(base_model=model, task=task)
    table = build_table(
        kind,
        results,
        metric=metric,
        model=model,
        task=task,
        method=method,
        calibration=calibration,
        sparsity=sparsity,
        seqlen=seqlen,
        outcomes=store.outcomes,
        num_fewshot=num_fewshot,
    )
    return table.to_json()
