"""/variants/{id}/speed: a variant's measured latency, throughput and memory vs its dense model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, Field

from backend.api.routes.variants import job_accepted
from backend.api.schemas import JobAccepted
from backend.api.state import ApiState, State
from backend.jobs import Job

router = APIRouter(tags=["speed"])

VariantId = Annotated[str, Path(min_length=1, max_length=128, description="A variant id.")]


class SpeedRequest(BaseModel):
    """How to time the variant; the defaults are `prunelens speed`'s."""

    batch: int = Field(default=1, ge=1, le=256, description="Sequences per timed forward.")
    seqlen: int = Field(default=128, ge=1, le=8192, description="Tokens per sequence.")
    repeats: int = Field(default=9, ge=1, le=100,
                         description="Interleaved timed repeats (the median ratio is reported).")
    warmup: int = Field(default=2, ge=0, le=20, description="Untimed repeats first.")


@router.get("/variants/{variant_id}/speed", summary="Stored speed measurements of a variant, newest first")
def variant_speed(variant_id: VariantId, state: State) -> list[dict]:
    from backend.evaluation.speed import stored_speeds
    from backend.pruning.variants import read_manifest, validate_variant_id

    read_manifest(validate_variant_id(variant_id), state.settings)  # unknown variant -> 404
    return stored_speeds(variant_id, state.settings)


@router.get("/speed", summary="Every stored speed measurement (for the accuracy-vs-speed view)")
def all_speeds(state: State) -> list[dict]:
    from backend.evaluation.speed import stored_speeds

    return [row for row in stored_speeds(settings=state.settings) if not row["stale"]]


@router.post("/variants/{variant_id}/speed", status_code=202, response_model=JobAccepted,
             summary="Measure a variant's speed against its dense model: starts a job")
def create_speed_job(variant_id: VariantId, body: SpeedRequest, state: State) -> JobAccepted:
    from backend.evaluation.speed import SpeedSettings
    from backend.pruning.variants import read_manifest, validate_variant_id

    manifest = read_manifest(validate_variant_id(variant_id), state.settings)
    model = state.pool.allowed_reference(manifest.get("base_model"))
    SpeedSettings(**body.model_dump()).check()  # bad shapes -> 400 now, not a failed job later
    job = state.jobs.submit("speed", {"model": model, "variant": variant_id, **body.model_dump()})
    return job_accepted(job)


def register_jobs(state: ApiState) -> None:
    def run_speed(job: Job, progress) -> dict:
        from backend.evaluation.speed import SpeedSettings, measure_speed

        params = dict(job.params)
        speed = SpeedSettings(batch=params["batch"], seqlen=params["seqlen"], repeats=params["repeats"],
                              warmup=params["warmup"])
        # bounded=False: the timing must not share the machine with another model's work
        with state.gate.hold(f"speed job {job.id[:8]}", bounded=False):
            progress(0.0, "loading the model")
            loaded = state.pool.get(params["model"])
            return measure_speed(loaded, params["variant"], speed, settings=state.settings, progress=progress)

    state.jobs.register("speed", run_speed)
