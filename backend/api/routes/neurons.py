"""/index/jobs, /indexes, /neurons: build a neuron index as a job, and read neuron pages from it.

Building is a job of kind ``index`` (progress, cancel; a build that stops early writes no readable
index, and ``POST /index/jobs/{id}/resume`` submits it again, continuing from its checkpoints).
Reads never load a model: the page of a neuron is read from the index's Parquet files once and
then served from memory (``neuron_reads``). Logit effects and text testing need the weights, so
they run on the server's model pool under the compute lock, and are cached by their inputs.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from backend.api.neuron_reads import AnswerCache, NsaSelections, json_bytes
from backend.api.neuron_schemas import (
    INDEX_ID_PATTERN,
    ChangedNeuron,
    Divergence,
    IndexSummary,
    NeuronLogits,
    NeuronPage,
    NsaSelection,
    SearchHit,
    TextTest,
    TextTestRequest,
)
from backend.api.routes.variants import job_accepted
from backend.api.schemas import JOB_ID_PATTERN, JobAccepted
from backend.api.state import ApiState, State
from backend.errors import ConflictError, NotFoundError, UserError
from backend.jobs import CANCELLED, FAILED, INTERRUPTED, Job
from backend.neurons.request import IndexRequest
from backend.neurons.store import indexes_root, read_index_manifest

JSON = "application/json"
CORPORA_FOLDER = "corpora"  # file: corpora over HTTP must lie in <cache_dir>/corpora/
RESUMABLE = (INTERRUPTED, CANCELLED, FAILED)

router = APIRouter(tags=["neurons"])

IndexId = Annotated[str, Path(pattern=INDEX_ID_PATTERN, max_length=128, description="Index id.")]
Layer = Annotated[int, Path(ge=0, le=10_000, description="Decoder layer (0 = first).")]
Neuron = Annotated[int, Path(ge=0, le=10_000_000, description="Neuron: column of the layer's down projection.")]
ModelName = Annotated[str, Path(max_length=300, description="Dense model (as GET /models names it).")]
VariantQuery = Annotated[str | None, Query(max_length=128, description="Variant id (none: dense only).")]


def _cache(state: ApiState, name: str) -> AnswerCache:
    return state.cache.setdefault(name, AnswerCache())


def _checked_variant(state: ApiState, model: str, variant: str) -> str:
    """The variant id when it exists and was pruned from ``model``: 404 / 400 otherwise."""
    from backend.pruning.variants import read_manifest, validate_variant_id

    manifest = read_manifest(validate_variant_id(variant), state.settings)
    if manifest.get("base_model") != model:
        raise UserError(f"variant {variant!r} was pruned from {manifest.get('base_model')!r}, not {model!r}")
    return variant


# ----------------------------------------------------------------------------- building


def _checked_corpus(state: ApiState, corpus: str) -> str:
    """Named corpora pass as they are; ``file:NAME`` must name a readable file in the server's
    ``corpora`` folder (a client never makes the server read an arbitrary path)."""
    from backend.data.sources import FILE_PREFIX
    from backend.data.user_files import read_user_file

    if not corpus.lower().startswith(FILE_PREFIX):
        return corpus
    folder = (FilePath(state.settings.cache_dir) / CORPORA_FOLDER).resolve()
    path = (folder / corpus[len(FILE_PREFIX):]).resolve()
    if folder not in path.parents:
        raise UserError(f"file: corpora over HTTP are read from the server's {CORPORA_FOLDER}/ folder "
                        "(give the file's name there)")
    records = read_user_file(path)  # UserError (400) when missing or unreadable
    if not records:
        raise UserError(f"{path.name}: no text in the corpus file")
    return f"{FILE_PREFIX}{path}"


def index_job_params(state: ApiState, body: IndexRequest) -> dict:
    """Validate now (bad input is a 4xx, not a failed job later) and give the canonical request."""
    model = state.pool.allowed_reference(body.model)
    variants = list(dict.fromkeys(_checked_variant(state, model, v) for v in body.variants))
    corpus = _checked_corpus(state, body.corpus)
    request = body.model_copy(update={"model": model, "variants": variants, "corpus": corpus})
    return {"request": request.model_dump(mode="json")}


@router.post("/index/jobs", status_code=202, response_model=JobAccepted,
             summary="Build a neuron index over a corpus: dense model and variants (a job)")
def submit_index_job(body: IndexRequest, state: State) -> JobAccepted:
    """The same request on the same code reuses the finished index (the job ends at once); a build
    that was stopped continues from its checkpoints."""
    return job_accepted(state.jobs.submit("index", index_job_params(state, body)))


@router.post("/index/jobs/{job_id}/resume", status_code=202, response_model=JobAccepted,
             summary="Submit an interrupted, cancelled or failed index build again",
             responses={409: {"description": "The job is not an index build that stopped early."}})
def resume_index_job(
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="The stopped index job.")], state: State
) -> JobAccepted:
    job = state.jobs.store.get(job_id)
    if job.kind != "index":
        raise ConflictError(f"job {job_id} is a {job.kind} job, not an index build")
    if job.state not in RESUMABLE:
        raise ConflictError(f"job {job_id} is {job.state}; only an interrupted, cancelled or failed build resumes")
    return job_accepted(state.jobs.submit("index", {"request": job.params["request"], "resumes": job_id}))


def register_jobs(state: ApiState) -> None:
    def run_index(job: Job, progress) -> dict:
        from backend.neurons.service import build_index

        request = IndexRequest(**job.params["request"])
        # The index job holds the compute lock like a prune: the build loads its own copies of the
        # model, and a GPU must not run two heavy things at once.
        with state.gate.hold(f"index job {job.id[:8]}", bounded=False):
            index_id = build_index(request, progress=lambda f, m: progress(min(f, 0.99), m))
        state.cache.pop("index_listing", None)
        return {"index_id": index_id}

    state.jobs.register("index", run_index)


# ----------------------------------------------------------------------------- indexes


async def index_listing(state: ApiState) -> list[dict]:
    """Every finished index, cached until the indexes folder changes."""
    from backend.neurons.store import list_indexes

    root = indexes_root(state.settings)
    try:
        stamp = root.stat().st_mtime_ns
    except FileNotFoundError:
        return []
    cached = state.cache.get("index_listing")
    if cached is not None and cached[0] == stamp:
        return cached[1]
    rows = await run_in_threadpool(list_indexes, settings=state.settings)
    state.cache["index_listing"] = (stamp, rows)
    return rows


@router.get("/indexes", response_model=list[IndexSummary], summary="Finished neuron indexes, newest first")
async def list_indexes_endpoint(
    state: State,
    model: Annotated[str | None, Query(max_length=300, description="Only indexes of this model.")] = None,
) -> list[dict]:
    return [row for row in await index_listing(state) if model is None or row["model"] == model]


@router.get("/indexes/{index_id}", response_model=dict, summary="An index's manifest (request, corpus, timings)")
async def read_index(index_id: IndexId, state: State) -> dict:
    return await _manifest(state, index_id)


async def _manifest(state: ApiState, index_id: str) -> dict:
    """An index's manifest, read once (an index never changes once written)."""
    manifests = state.cache.setdefault("index_manifests", {})
    if index_id not in manifests:
        manifests[index_id] = await run_in_threadpool(read_index_manifest, index_id, state.settings)
    return manifests[index_id]


async def _index_variant(state: ApiState, index_id: str, variant: str | None) -> dict:
    manifest = await _manifest(state, index_id)
    if variant is not None and variant not in manifest.get("variants", []):
        raise NotFoundError(f"index {index_id} holds no variant {variant!r} "
                            f"(it holds: {', '.join(manifest.get('variants', [])) or 'none'})")
    return manifest


async def _cached(state: ApiState, cache: str, key: tuple, compute) -> Response:
    answers = _cache(state, cache)
    body = answers.get(key)
    if body is None:
        body = await run_in_threadpool(answers.get_or_compute, key, compute)
    return Response(body, media_type=JSON)


@router.get("/indexes/{index_id}/changed", response_model=list[ChangedNeuron],
            summary="Neurons ranked by how much the variant changed them, with their noise floors")
async def changed(
    index_id: IndexId, state: State,
    variant: Annotated[str, Query(max_length=128, description="Variant id in the index.")],
    layer: Annotated[int | None, Query(ge=0, description="Only this layer.")] = None,
    order: Annotated[Literal["pearson", "mass_lost", "topk_overlap", "profile_correlation"],
                     Query(description="Rank by: lowest correlation / overlap, or most mass lost.")] = "pearson",
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many neurons.")] = 50,
    include_noise: Annotated[bool, Query(description="Also neurons not distinguishable from corpus noise.")] = True,
) -> Response:
    from backend.neurons.queries import changed_neurons

    await _index_variant(state, index_id, variant)
    return await _cached(state, "changed", (index_id, variant, layer, order, limit, include_noise),
                         lambda: changed_neurons(index_id, variant, layer=layer, order=order, limit=limit,
                                                 include_noise=include_noise, settings=state.settings))


@router.get("/indexes/{index_id}/divergence", response_model=Divergence,
            summary="Where the variant's next-token distribution diverges most from the dense model's")
async def divergence(
    index_id: IndexId, state: State,
    variant: Annotated[str, Query(max_length=128, description="Variant id in the index.")],
    limit: Annotated[int, Query(ge=1, le=1000, description="Contexts and tokens to list.")] = 50,
) -> Response:
    from backend.neurons.queries import divergent_contexts

    await _index_variant(state, index_id, variant)
    return await _cached(state, "divergence", (index_id, variant, limit),
                         lambda: divergent_contexts(index_id, variant, limit=limit, settings=state.settings))


@router.get("/indexes/{index_id}/search", response_model=list[SearchHit],
            summary="Neurons whose top examples fire on a token")
async def search(
    index_id: IndexId, state: State,
    token: Annotated[str, Query(min_length=1, max_length=100, description="The token's text, e.g. 'terrible'.")],
    variant: VariantQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many neurons.")] = 50,
) -> Response:
    from backend.neurons.queries import search_neurons

    await _index_variant(state, index_id, variant)
    return await _cached(state, "search", (index_id, token, variant, limit),
                         lambda: search_neurons(index_id, token, variant=variant, limit=limit,
                                                settings=state.settings))


# ----------------------------------------------------------------------------- neurons


async def _resolve_index(state: ApiState, model: str, variant: str | None, index: str | None) -> str:
    """The index to read: the one asked for (of this model), else the newest of the model that
    holds the variant."""
    if index is None:
        rows = [row for row in await index_listing(state)
                if row["model"] == model and not row.get("stale")
                and (variant is None or variant in row.get("variants", []))]
        if not rows:
            holding = f" holding variant {variant!r}" if variant else ""
            raise NotFoundError(f"no index of model {model!r}{holding}: build one with POST /index/jobs")
        return max(rows, key=lambda row: row.get("created") or "")["id"]
    manifest = await _index_variant(state, index, variant)
    if manifest.get("model") != model:
        raise UserError(f"index {index} was built on {manifest.get('model')!r}, not {model!r}")
    return index


def _model_size(state: ApiState, model: str, layer: int, neuron: int, loaded) -> None:
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    if layer >= layers:
        raise UserError(f"layer {layer} is out of range: {model} has layers 0..{layers - 1}")
    neurons = loaded.adapter.neuron_count(loaded.model)
    if neuron >= neurons:
        raise UserError(f"neuron {neuron} out of range: layers have neurons 0..{neurons - 1}")


@router.get("/neurons/{model:path}/{layer}/{neuron}/logits", response_model=NeuronLogits,
            summary="The tokens the neuron's output promotes and suppresses, dense and under a variant")
def neuron_logits(
    model: ModelName, layer: Layer, neuron: Neuron, state: State, variant: VariantQuery = None,
    k: Annotated[int, Query(ge=1, le=100, description="Tokens per side.")] = 10,
) -> Response:
    from backend.neurons.effects import logit_effects
    from backend.pruning.variants import variant_applied

    model = state.pool.allowed_reference(model)
    if variant is not None:
        _checked_variant(state, model, variant)

    def compute() -> dict:
        with state.gate.hold("neuron logit effects"):
            loaded = state.pool.get(model)
            _model_size(state, model, layer, neuron, loaded)
            dense = logit_effects(loaded, layer, neuron, k=k)
            changed = None
            if variant is not None:
                with variant_applied(loaded, variant, state.settings):
                    changed = logit_effects(loaded, layer, neuron, k=k)
        return {"model": model, "layer": layer, "neuron": neuron, "dense": dense, "variant": changed,
                "variant_id": variant}

    return Response(_cache(state, "logits").get_or_compute((model, layer, neuron, variant, k), compute),
                    media_type=JSON)


@router.post("/neurons/{model:path}/{layer}/{neuron}/test", response_model=TextTest,
             summary="The neuron's activation on each token of your text, dense and under a variant")
def neuron_text_test(model: ModelName, layer: Layer, neuron: Neuron, body: TextTestRequest,
                     state: State) -> Response:
    from backend.neurons.effects import test_text

    model = state.pool.allowed_reference(model)
    if body.variant is not None:
        _checked_variant(state, model, body.variant)
    if not body.text.strip():
        raise UserError("the text is empty")
    with state.gate.hold("neuron text test"):
        loaded = state.pool.get(model)
        _model_size(state, model, layer, neuron, loaded)
        answer = test_text(loaded, layer, neuron, body.text, variant=body.variant)
    return Response(json_bytes(answer), media_type=JSON)


@router.get("/neurons/{model:path}/{layer}/{neuron}/nsa", response_model=list[NsaSelection],
            summary="Stored NSA results that selected this neuron, with their held-out figures")
async def neuron_nsa_results(model: ModelName, layer: Layer, neuron: Neuron, state: State) -> list[dict]:
    selections: NsaSelections = state.cache.setdefault("nsa_selections", NsaSelections())
    return await run_in_threadpool(selections.of_neuron, state.nsa_results, model, layer, neuron)


@router.get("/neurons/{model:path}/{layer}/{neuron}", response_model=NeuronPage,
            summary="A neuron's page: top examples, density, and what the variant changed")
async def neuron(
    model: ModelName, layer: Layer, neuron: Neuron, state: State, variant: VariantQuery = None,
    index: Annotated[str | None, Query(pattern=INDEX_ID_PATTERN, max_length=128,
                                       description="Index id (default: the newest of the model "
                                                   "holding the variant).")] = None,
) -> Response:
    from backend.neurons.queries import neuron_page

    index_id = await _resolve_index(state, model, variant, index)
    key = (index_id, layer, neuron, variant)
    pages = state.pages
    if pages is None:
        return await _cached(state, "neuron_pages", key,
                             lambda: neuron_page(index_id, layer, neuron, variant=variant, settings=state.settings))
    # built in a worker process (backend.api.page_processes): no thread of this one is held
    body = await _cache(state, "neuron_pages").get_or_build(key, lambda: pages.page(index_id, layer, neuron, variant))
    return Response(body, media_type=JSON)
