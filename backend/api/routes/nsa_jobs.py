"""POST /nsa/jobs: NSA over many (labelled) texts as a job, with progress, cancel and the causal check.

POST /nsa answers while the client waits; a dataset-level run (100 SST-2 examples, patching in
three variants) takes minutes, so the same request (``NsaRequest``) runs here as a job of kind
``nsa`` like a prune: 202 with the job, progress and cancel through /jobs, and the finished
result stored in the NSA results store (``result_id``, read with GET /nsa/{id}). A cancelled or
interrupted job stores nothing: the result is written once, after the run, in one SQLite insert.
"""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.routes.nsa import normalised_request, run_attribution
from backend.api.routes.variants import job_accepted
from backend.api.schemas import JobAccepted, NsaRequest
from backend.api.state import ApiState, State
from backend.jobs import Job
from backend.nsa.results_store import request_id

router = APIRouter(tags=["nsa"])


@router.post("/nsa/jobs", status_code=202, response_model=JobAccepted,
             summary="Attribute over many texts or a labelled dataset as a job (progress, cancel)")
def submit_nsa_job(body: NsaRequest, state: State) -> JobAccepted:
    # Validated now: bad input is a 4xx, not a failed job later.
    return job_accepted(state.jobs.submit("nsa", {"request": normalised_request(state, body)}))


def register_jobs(state: ApiState) -> None:
    def run_nsa(job: Job, progress) -> dict:
        request = job.params["request"]
        result_id = request_id(request)
        if state.nsa_results.get_bytes(result_id) is not None:
            return {"result_id": result_id, "reused": True}
        with state.gate.hold(f"NSA job {job.id[:8]}", bounded=False):
            progress(0.0, "loading the model")
            loaded = state.pool.get(request["model"])
            result = run_attribution(loaded, request, state.settings,
                                     progress=lambda fraction, message: progress(min(fraction, 0.99), message))
        state.nsa_results.put(result_id, request, result)
        return {"result_id": result_id, "reused": False}

    state.jobs.register("nsa", run_nsa)
