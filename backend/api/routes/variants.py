"""/variants: list, read and delete pruned variants; POST starts a prune job.

Listing reads every manifest once and caches the list until the variants folder changes (its
mtime moves whenever a variant is renamed into place or deleted), so polling clients cost a stat.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from backend.api.schemas import (
    VARIANT_ID_PATTERN,
    DeletedVariant,
    JobAccepted,
    JobInfo,
    MethodInfo,
    PruneRequest,
    VariantSummary,
)
from backend.api.state import ApiState, State
from backend.jobs import Job

router = APIRouter(tags=["variants"])

VariantId = Annotated[
    str, Path(pattern=VARIANT_ID_PATTERN, max_length=128, description="Variant id.")
]


# ----------------------------------------------------------------------------- reading


async def variant_manifests(state: ApiState) -> list[dict]:
    from backend.pruning.variants import list_variants

    root = state.settings.variants_dir
    try:
        stamp = root.stat().st_mtime_ns  # taken before listing: a change during it shows next time
    except FileNotFoundError:
        return []
    cached = state.cache.get("listing")
    if cached is not None and cached[0] == stamp:
        return cached[1]
    manifests = await run_in_threadpool(
        list_variants, settings=state.settings
    )  # file reads: off the loop
    state.cache["listing"] = (stamp, manifests)
    return manifests


def summary(manifest: dict) -> dict:
    achieved = manifest.get("achieved_sparsity") or {}
    return {
        "id": manifest.get("id", ""),
        "base_model": manifest.get("base_model", ""),
        "method": manifest.get("method"),
        "calibration": manifest.get("calibration"),
        "sparsity": manifest.get("sparsity"),
        "achieved_sparsity": achieved.get("overall"),
        "nsamples": manifest.get("nsamples"),
        "seqlen": manifest.get("seqlen"),
        "seed": manifest.get("seed"),
        "created_at": manifest.get("created_at"),
        "stale": bool(manifest.get("stale")),
    }


@router.get("/variants", response_model=list[VariantSummary], summary="List pruned variants")
async def list_variants_endpoint(
    state: State,
    base: Annotated[
        str | None, Query(max_length=300, description="Only variants of this base model.")
    ] = None,
    method: Annotated[
        str | None, Query(max_length=32, description="Only this pruning method.")
    ] = None,
    calibration: Annotated[
        str | None, Query(max_length=64, description="Only this calibration set.")
    ] = None,
    sparsity: Annotated[
        str | None, Query(max_length=32, description="Only this sparsity label ('0.5', '2:4').")
    ] = None,
) -> list[dict]:
    wanted = {
        "base_model": base,
        "method": method,
        "calibration": calibration,
        "sparsity": sparsity,
    }
    return [
        summary(manifest)
        for manifest in await variant_manifests(state)
        if all(value is None or manifest.get(key) == value for key, value in wanted.items())
    ]


@router.get("/variants/{variant_id}", response_model=dict, summary="A variant's manifest")
def read_variant(variant_id: VariantId, state: State) -> dict:
    from backend.pruning.variants import read_manifest

    return read_manifest(variant_id, state.settings)


@router.delete("/variants/{variant_id}", response_model=DeletedVariant, summary="Delete a variant")
def delete_variant_endpoint(variant_id: VariantId, state: State) -> dict:
    from backend.pruning.variants import delete_variant

    delete_variant(variant_id, state.settings)
    return {"deleted": variant_id}


# ----------------------------------------------------------------------------- pruning


@router.get("/methods", response_model=list[MethodInfo], summary="Pruning methods and their options")
def list_methods() -> list[dict]:
    from backend.pruning.registry import methods

    return [method.describe() for method in methods().values()]


def job_accepted(job: Job, **extra) -> JobAccepted:
    return JobAccepted(
        job=JobInfo(**job.to_json()),
        job_url=f"/jobs/{job.id}",
        events_url=f"/jobs/{job.id}/events",
        **extra,
    )


@router.post(
    "/variants",
    status_code=202,
    response_model=JobAccepted,
    summary="Prune a model: starts a job, returns its id",
)
def create_variant_job(body: PruneRequest, state: State) -> JobAccepted:
    from backend.pruning.engine import variant_id
    from backend.pruning.service import check_prune_request

    model = state.pool.allowed_reference(body.model)
    # Bad input is refused now, not as a failed job later.
    config = check_prune_request(body, model_name=model, protection=body.protection_request(), allow_files=False,
                                 settings=state.settings)
    # The job's request in one form: the sparsity as the label parse reads back (a pattern or a
    # neuron ratio given becomes it; a depth method takes none, its amount is options.drop_blocks),
    # the calibration as the engine takes it.
    params = {**body.model_dump(exclude={"pattern", "neuron_ratio"}), "model": model,
              "calibration": config.calibration, "sparsity": None if config.info.depth else config.spec.label}
    default = state.pool.default
    # Known now only when the job will prune the loaded default model (and no NSA selection has
    # to run first); else the job records it.
    predicted = (variant_id(default, config) if default is not None and default.name == model
                 and body.protect_task is None else None)
    if predicted is not None:
        params["variant_id"] = predicted
    job = state.jobs.submit("prune", params)
    return job_accepted(job, variant_id=predicted)


def register_jobs(state: ApiState) -> None:
    def run_prune(job: Job, progress) -> dict:
        from backend.pruning.service import prune_variant

        request = PruneRequest(
            **{key: value for key, value in job.params.items() if key in PruneRequest.model_fields}
        )
        with state.gate.hold(f"prune job {job.id[:8]}", bounded=False):
            progress(0.0, "loading the model")
            loaded = state.pool.get(request.model)
            result = prune_variant(
                loaded, request, protection=request.protection_request(), progress=progress,
                settings=state.settings, allow_files=False,
                on_variant_id=None if "variant_id" in job.params
                else lambda vid: state.jobs.store.add_params(job.id, {"variant_id": vid}),
            )
        return {
            "variant_id": result.variant_id,
            "reused": result.reused,
            "achieved_sparsity": (result.manifest.get("achieved_sparsity") or {}).get("overall"),
        }

    def remove_partial_variant(job: Job) -> None:
        """A variant is written to '.<id>.<random>' and renamed into place: after a crash, drop
        that staging folder (a finished variant is complete and stays)."""
        from backend.pruning.variants import variant_dir
        from backend.storage import discard_staging

        if job.params.get("variant_id"):
            discard_staging(variant_dir(job.params["variant_id"], state.settings))

    state.jobs.register("prune", run_prune, on_interrupted=remove_partial_variant)
