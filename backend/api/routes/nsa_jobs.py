"""POST /nsa/jobs: NSA over many (labelled) texts as a job, with progress, cancel and the causal check.

POST /nsa answers while the client waits; a dataset-level run (100 SST-2 examples, patching in
three variants) takes minutes, so it runs as a job of kind ``nsa`` like a prune: 202 with the
job, progress and cancel through /jobs, and the finished result stored in the NSA results store
(``result_id``, read with GET /nsa/{id}). A cancelled or interrupted job stores nothing: the
result is written once, after the run, in one SQLite insert.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import Field, model_validator

from backend.api.routes.nsa import normalised_request
from backend.api.routes.variants import job_accepted
from backend.api.schemas import MAX_VARIANTS, MAX_WORDS, JobAccepted, Strict
from backend.api.state import ApiState, State
from backend.errors import UserError
from backend.jobs import Job
from backend.nsa.results_store import request_id

MAX_JOB_TEXTS = 1000

router = APIRouter(tags=["nsa"])


class NsaJobRequest(Strict):
    model: str | None = Field(default=None, max_length=300, description="Dense model; default: the server's.")
    texts: list[str] | None = Field(default=None, min_length=1, max_length=MAX_JOB_TEXTS,
                                    description="The texts (or give `dataset`).")
    labels: list[str] | None = Field(default=None, max_length=MAX_JOB_TEXTS,
                                     description="One gold label per text (e.g. positive/negative).")
    dataset: str | None = Field(default=None, max_length=64,
                                description="Labelled examples from an offline set: sst2, imdb, rte or boolq.")
    n: int = Field(default=100, ge=1, le=MAX_JOB_TEXTS, description="Examples drawn from `dataset`.")
    seed: int = Field(default=0, ge=0, description="Example draw, fold split and random-neuron seed.")
    words: list[str] | None = Field(default=None, max_length=MAX_WORDS, description="Influential words given.")
    task: str = Field(default="sentiment", min_length=1, max_length=64, description="NSA task type.")
    variants: list[str] = Field(default_factory=list, max_length=MAX_VARIANTS, description="Variant ids.")
    top_k: int = Field(default=20, ge=1, le=500, description="Neurons selected by score.")
    ablate: bool = Field(default=False, description="Zero the neurons in the dense model vs the matched null.")
    patch: bool = Field(default=False, description="Cross-fitted patching in each variant (needs labels).")
    split: bool = Field(default=True, description="Cross-fitted held-out statistics (>= 4 texts); false: "
                                                  "in-sample only (the causal check is cross-fitted either way).")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.texts is None) == (self.dataset is None):
            raise ValueError("give either texts or dataset")
        if self.labels is not None and (self.texts is None or len(self.labels) != len(self.texts)):
            raise ValueError("labels must give one label per text")
        return self


def job_request(state: ApiState, body: NsaJobRequest) -> dict:
    """Validate now (bad input is a 4xx, not a failed job later) and resolve dataset examples."""
    from backend.nsa.tasks import get_task

    task = get_task(body.task)
    if body.dataset is not None:
        from backend.data.sources import labelled_examples

        examples = labelled_examples(body.dataset, body.n, body.seed)
        texts: list[str] = [ex["text"] for ex in examples]
        labels: list[str] | None = [str(ex["label_text"]) for ex in examples]
    else:  # the request model requires texts when there is no dataset
        texts, labels = list(body.texts or []), body.labels
    if any(not text.strip() for text in texts):
        raise UserError("empty text")
    if body.patch:
        if not body.variants:
            raise UserError("patching needs at least one variant")
        if labels is None or any(task.label_index(label) is None for label in labels):
            words = ", ".join(word.strip() for word in task.label_words)
            raise UserError(f"patching needs a gold label ({words}) for every text")
    request = normalised_request(state, model=body.model, texts=texts, words=body.words, task=body.task,
                                 variants=body.variants, top_k=body.top_k, ablate=body.ablate,
                                 split=body.split)
    return {**request, "labels": labels, "patch": body.patch, "seed": body.seed}


@router.post("/nsa/jobs", status_code=202, response_model=JobAccepted,
             summary="Attribute over many texts or a labelled dataset as a job (progress, cancel)")
def submit_nsa_job(body: NsaJobRequest, state: State) -> JobAccepted:
    return job_accepted(state.jobs.submit("nsa", {"request": job_request(state, body)}))


def register_jobs(state: ApiState) -> None:
    def run_nsa(job: Job, progress) -> dict:
        from backend.nsa.service import attribute

        request = job.params["request"]
        result_id = request_id(request)
        if state.nsa_results.get_bytes(result_id) is not None:
            return {"result_id": result_id, "reused": True}
        labels = request["labels"] or [None] * len(request["texts"])
        texts = [{"text": text, "label_text": label} if label is not None else {"text": text}
                 for text, label in zip(request["texts"], labels, strict=True)]
        with state.gate.hold(f"NSA job {job.id[:8]}", bounded=False):
            progress(0.0, "loading the model")
            loaded = state.pool.get(request["model"])
            result = attribute(loaded, texts, words=request["words"], task=request["task"],
                               variants=tuple(request["variants"]), top_k=request["top_k"],
                               ablate=request["ablate"], patch=request["patch"], seed=request["seed"],
                               split=request.get("split", True),
                               progress=lambda fraction, message: progress(min(fraction, 0.99), message),
                               settings=state.settings)
        state.nsa_results.put(result_id, request, result)
        return {"result_id": result_id, "reused": False}

    state.jobs.register("nsa", run_nsa)
