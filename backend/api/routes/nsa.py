"""/nsa: Neuron Semantic Attribution over HTTP, and stored results shared by id.

POST /nsa and POST /nsa/upload are the heavy requests: they run the NSA service on the model
under the compute lock (queued, 429/503 when the line is full or the wait too long). A request
that was answered before is answered again from the store, without the lock. GET /nsa/{id}
returns a stored result as the bytes that were stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import Response

from backend.api.schemas import (
    MAX_NSA_TEXTS,
    MAX_VARIANTS,
    MAX_WORDS,
    NSA_ID_PATTERN,
    AttributionTaskInfo,
    NsaRequest,
    NsaStored,
    NsaSummary,
)
from backend.api.state import ApiState, State
from backend.api.uploads import (
    UploadTooLargeError,
    display_name,
    records_from_upload,
    words_from_records,
)
from backend.errors import UserError
from backend.nsa.results_store import marked_if_stale, request_id

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

JSON = "application/json"
MULTIPART_OVERHEAD = (
    64 << 10
)  # form fields and part headers around the file (see app.BodyLimitMiddleware)


def run_attribution(loaded: LoadedModel, request: dict, settings) -> dict:
    """The NSA service on a normalised request (the one seam tests may replace); variants are
    read from the server's cache (``settings``), not the environment's default."""
    from backend.nsa.service import attribute

    return attribute(
        loaded,
        request["texts"],
        words=request["words"],
        task=request["task"],
        variants=tuple(request["variants"]),
        top_k=request["top_k"],
        ablate=request["ablate"],
        split=request.get("split", True),
        settings=settings,
    )


def normalised_request(
    state: ApiState,
    *,
    model: str | None,
    texts: list[str],
    words: list[str] | list[list[str]] | None,
    task: str,
    variants: list[str],
    top_k: int,
    ablate: bool,
    split: bool = True,
) -> dict:
    """Validate names and ids and put the request in the canonical form its result id hashes."""
    from backend.nsa.tasks import get_task
    from backend.pruning.variants import read_manifest, validate_variant_id

    model_name = state.pool.allowed_reference(model)
    chosen: list[str] = []
    for variant_id in variants:
        manifest = read_manifest(validate_variant_id(variant_id), state.settings)  # 400 / 404
        if manifest.get("base_model") != model_name:
            raise UserError(
                f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, "
                f"not {model_name!r}"
            )
        if variant_id not in chosen:
            chosen.append(variant_id)
    return {
        "model": model_name,
        "texts": texts,
        "words": words,
        "task": get_task(task).name,
        "variants": chosen,
        "top_k": top_k,
        "ablate": ablate,
        # Only when turned off, so that default requests keep their canonical form.
        **({} if split else {"split": False}),
    }


def attribute_or_reuse(state: ApiState, request: dict) -> bytes:
    result_id = request_id(request)
    stored = state.nsa_results.get_bytes(result_id)
    if stored is not None:
        return stored
    with state.gate.hold("NSA request"):
        stored = state.nsa_results.get_bytes(
            result_id
        )  # the same request may have finished meanwhile
        if stored is not None:
            return stored
        loaded = state.pool.get(request["model"])
        result = run_attribution(loaded, request, state.settings)
    return state.nsa_results.put(result_id, request, result)


def _comma_list(text: str | None, what: str, limit: int) -> list[str]:
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if len(items) > limit:
        raise UserError(f"{what}: at most {limit} items")
    return items


def build_router(max_upload_bytes: int) -> APIRouter:
    router = APIRouter(tags=["nsa"])

    @router.get("/nsa/tasks", response_model=list[AttributionTaskInfo], summary="NSA task types")
    async def list_attribution_tasks() -> list[dict]:
        from backend.nsa.tasks import TASKS

        return [
            {
                "name": task.name,
                "label_words": [word.strip() for word in task.label_words],
                "probe": task.probe,
            }
            for task in TASKS.values()
        ]

    @router.get("/nsa", response_model=list[NsaSummary], summary="Stored NSA results, newest first")
    async def list_results(
        state: State,
        model: Annotated[
            str | None, Query(max_length=300, description="Only results on this model.")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000, description="At most this many results.")] = 100,
    ) -> list[dict]:
        return state.nsa_results.list(model=model, limit=limit)

    @router.post(
        "/nsa", response_model=NsaStored, summary="Attribute neurons to the words of a text"
    )
    def attribute_texts(body: NsaRequest, state: State) -> Response:
        request = normalised_request(
            state,
            model=body.model,
            texts=body.all_texts(),
            words=body.all_words(),
            task=body.task,
            variants=body.variants,
            top_k=body.top_k,
            ablate=body.ablate,
            split=body.split,
        )
        return Response(attribute_or_reuse(state, request), media_type=JSON)

    @router.post(
        "/nsa/upload",
        response_model=NsaStored,
        summary="Attribute over the texts of an uploaded .txt, .csv or .jsonl file",
    )
    def attribute_upload(
        state: State,
        file: Annotated[
            UploadFile,
            File(
                description=".txt (paragraphs split on blank lines), .csv with a 'text' "
                "column, or .jsonl with a 'text' field per line."
            ),
        ],
        task: Annotated[str, Form(max_length=64, description="NSA task type.")] = "sentiment",
        words: Annotated[
            str | None, Form(max_length=20000, description="Comma-separated influential words.")
        ] = None,
        variants: Annotated[
            str | None, Form(max_length=2000, description="Comma-separated variant ids.")
        ] = None,
        top_k: Annotated[int, Form(ge=1, le=500, description="Neurons selected by score.")] = 20,
        ablate: Annotated[bool, Form(description="Also run the ablation check.")] = False,
        split: Annotated[
            bool, Form(description="Cross-fitted held-out figures (>= 4 texts).")
        ] = True,
        model: Annotated[
            str | None, Form(max_length=300, description="Dense model; default: the server's.")
        ] = None,
    ) -> Response:
        raw = file.file.read(max_upload_bytes + 1)
        if len(raw) > max_upload_bytes:
            raise UploadTooLargeError(
                f"{display_name(file.filename)}: larger than the upload limit of "
                f"{max_upload_bytes} bytes"
            )
        records = records_from_upload(file.filename, raw, max_texts=MAX_NSA_TEXTS)
        texts = [record["text"] for record in records]
        request = normalised_request(
            state,
            model=model,
            texts=texts,
            words=_comma_list(words, "words", MAX_WORDS)
            or words_from_records(records),
            task=task,
            variants=_comma_list(variants, "variants", MAX_VARIANTS),
            top_k=top_k,
            ablate=ablate,
            split=split,
        )
        return Response(attribute_or_reuse(state, request), media_type=JSON)

    @router.get("/nsa/{result_id}", response_model=NsaStored, summary="A stored NSA result")
    async def read_result(
        result_id: Annotated[
            str, Path(pattern=NSA_ID_PATTERN, description="Result id (20 hex digits).")
        ],
        state: State,
    ) -> Response:
        return Response(
            marked_if_stale(state.nsa_results.require_bytes(result_id)), media_type=JSON
        )

    return router
