"""/experiments/protect: the stored protected-neurons experiments (``prunelens experiment protect``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from backend.api.routes.evaluations import results_store
from backend.api.state import State

router = APIRouter(tags=["experiments"])

ExperimentId = Annotated[str, Path(pattern=r"^protect-[a-z0-9_]{1,32}-[0-9a-f]{12}$",
                                   description="Experiment id, as `prunelens experiment list` prints it.")]


@router.get("/experiments/protect", response_model=list[dict[str, Any]],
            summary="Protected-neurons experiments: id, status, spec (newest first)")
def list_protect_experiments(state: State) -> list[dict]:
    from backend.guided.protect_experiment import list_experiments

    return list_experiments(results_store(state))


@router.get("/experiments/protect/{experiment_id}", response_model=dict[str, Any],
            summary="One experiment: spec, protected neurons, and the table rows (accuracy, 95% "
                    "interval, paired difference to the unprotected arm with its p-value)")
def read_protect_experiment(experiment_id: ExperimentId, state: State) -> dict:
    from backend.guided.protect_experiment import read_experiment

    return read_experiment(experiment_id, results_store(state))
