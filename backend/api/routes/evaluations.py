"""/evaluations: stored lm-eval results (filters), and POST to evaluate a model or variant as a job."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from backend.api.evaluation_schemas import DenseComparison, EvaluationRequest, EvaluationResult
from backend.api.routes.variants import job_accepted
from backend.api.schemas import JobAccepted
from backend.api.state import ApiState, State
from backend.errors import UserError
from backend.jobs import Job

router = APIRouter(tags=["evaluations"])

DENSE_NAME = "dense"  # how a client names the unpruned model in filters


def results_store(state: ApiState):
    """One ResultsStore per server (opening one creates its schema: not on every request)."""
    store = state.cache.get("results_store")
    if store is None:
        from backend.evaluation.store import ResultsStore

        store = state.cache["results_store"] = ResultsStore.from_settings(state.settings)
    return store


@router.get(
    "/evaluations", response_model=list[EvaluationResult], summary="Stored evaluation results"
)
def list_evaluations(
    state: State,
    base_model: Annotated[
        str | None, Query(max_length=300, description="Only results of this base model.")
    ] = None,
    variant: Annotated[
        str | None,
        Query(
            max_length=128, description="Only this variant id, or 'dense' for the unpruned model."
        ),
    ] = None,
    task: Annotated[str | None, Query(max_length=64, description="Only this task.")] = None,
) -> list[dict]:
    from backend.evaluation.store import DENSE

    variant_id = DENSE if variant == DENSE_NAME else variant
    rows = results_store(state).results(base_model=base_model, variant_id=variant_id, task=task)
    return [row.to_json() for row in rows]


@router.get(
    "/evaluations/compare",
    response_model=list[DenseComparison],
    summary="A variant against the dense model on the same examples: intervals and paired test",
)
def compare_evaluations(
    state: State,
    base_model: Annotated[str, Query(min_length=1, max_length=300, description="The dense model.")],
    variant: Annotated[str, Query(min_length=1, max_length=128, description="A variant id.")],
    metric: Annotated[
        str, Query(min_length=1, max_length=64, description="lm-eval metric key.")
    ] = "acc,none",
) -> list[dict]:
    from backend.evaluation.paired import compare_to_dense

    return compare_to_dense(results_store(state), base_model, variant, metric)


@router.post(
    "/evaluations",
    status_code=202,
    response_model=JobAccepted,
    summary="Evaluate a model or variant on tasks: starts a job",
)
def create_evaluation_job(body: EvaluationRequest, state: State) -> JobAccepted:
    from backend.evaluation.registry import parse_task_names
    from backend.pruning.variants import read_manifest

    tasks = parse_task_names(body.tasks)  # unknown task -> 400 now, not a failed job later
    model = state.pool.allowed_reference(body.model)
    if body.variant is not None:
        manifest = read_manifest(body.variant, state.settings)
        if manifest.get("base_model") != model:
            raise UserError(
                f"variant {body.variant!r} was pruned from {manifest.get('base_model')!r}, "
                f"not {model!r}"
            )
    job = state.jobs.submit(
        "evaluate",
        {
            "model": model,
            "variant": body.variant,
            "tasks": tasks,
            "limit": body.limit,
            "sample_seed": body.sample_seed,
            "num_fewshot": body.num_fewshot,
        },
    )
    return job_accepted(job)


def register_jobs(state: ApiState) -> None:
    def run_evaluation(job: Job, progress) -> dict:
        from backend.evaluation.runner import DEFAULT_SAMPLE_SEED, evaluate

        params = job.params
        with state.gate.hold(f"evaluation job {job.id[:8]}", bounded=False):
            progress(0.0, "loading the model")
            loaded = state.pool.get(params["model"])
            results = evaluate(
                loaded,
                params["tasks"],
                variant_id=params.get("variant"),
                limit=params.get("limit"),
                sample_seed=params.get("sample_seed", DEFAULT_SAMPLE_SEED),
                num_fewshot=params.get("num_fewshot", 0),
                store=results_store(state),
                progress=progress,
                cache_settings=state.settings,
            )
        return {
            "results": [item.stored.to_json() for item in results],
            "reused": [item.task for item in results if item.reused],
        }

    state.jobs.register("evaluate", run_evaluation)
