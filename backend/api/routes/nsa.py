"""/nsa: Neuron Semantic Attribution over HTTP, and stored results shared by id.

One request shape (``NsaRequest``: inputs plus ``NsaOptions``) for POST /nsa and POST /nsa/jobs;
the upload's form fields are the same options. POST /nsa and POST /nsa/upload are the heavy
requests: they run the NSA service on the model
under the compute lock (queued, 429/503 when the line is full or the wait too long). A request
that was answered before is answered again from the store, without the lock. GET /nsa/{id}
returns a stored result as the bytes that were stored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Form, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError

from backend.api.schemas import (
    MAX_NSA_TEXTS,
    MAX_VARIANTS,
    MAX_WORDS,
    NSA_ID_PATTERN,
    AttributionTaskInfo,
    NsaRequest,
    NsaStored,
    NsaSummary,
    NsaUpload,
)
from backend.api.state import ApiState, State
from backend.api.uploads import (
    UploadTooLargeError,
    display_name,
    records_from_upload,
    words_from_records,
)
from backend.errors import UserError
from backend.nsa.options import NsaOptions, options_of
from backend.nsa.results_store import marked_if_stale, request_id

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

JSON = "application/json"
MULTIPART_OVERHEAD = (
    64 << 10
)  # form fields and part headers around the file (see app.BodyLimitMiddleware)


def request_texts(request: dict) -> list[dict]:
    """A stored request's texts as the service takes them (with their gold labels, if any)."""
    labels = request.get("labels") or [None] * len(request["texts"])
    return [{"text": text, "label_text": label} if label is not None else {"text": text}
            for text, label in zip(request["texts"], labels, strict=True)]


def run_attribution(loaded: LoadedModel, request: dict, settings, progress=None) -> dict:
    """The NSA service on a normalised request (the one seam tests may replace); variants are
    read from the server's cache (``settings``), not the environment's default."""
    from backend.nsa.service import attribute

    options = NsaOptions.model_validate({name: request[name] for name in NsaOptions.model_fields if name in request})
    return attribute(loaded, request_texts(request), words=request["words"], variants=tuple(request["variants"]),
                     options=options, progress=progress, settings=settings)


def normalised_request(state: ApiState, body: NsaRequest) -> dict:
    """Validate names and ids, draw dataset examples, and put the request in the canonical form
    its result id hashes: the inputs, the first options always, the others when not default."""
    from backend.nsa.tasks import get_task
    from backend.pruning.variants import read_manifest, validate_variant_id

    model_name = state.pool.allowed_reference(body.model)
    task = get_task(body.task)
    if body.dataset is not None:
        from backend.data.sources import labelled_examples

        examples = labelled_examples(body.dataset, body.n, body.seed)
        texts: list[str] = [example["text"] for example in examples]
        labels: list[str] | None = [str(example["label_text"]) for example in examples]
    else:
        texts, labels = body.all_texts(), body.labels
    if any(not text.strip() for text in texts):
        raise UserError("empty text")
    if body.patch:
        if not body.variants:
            raise UserError("patching needs at least one variant")
        if labels is None or any(task.label_index(label) is None for label in labels):
            label_words = ", ".join(word.strip() for word in task.label_words)
            raise UserError(f"patching needs a gold label ({label_words}) for every text")
    chosen: list[str] = []
    for variant_id in body.variants:
        manifest = read_manifest(validate_variant_id(variant_id), state.settings)  # 400 / 404
        if manifest.get("base_model") != model_name:
            raise UserError(
                f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, "
                f"not {model_name!r}"
            )
        if variant_id not in chosen:
            chosen.append(variant_id)
    options = options_of(body).model_copy(update={"task": task.name})
    return {
        "model": model_name,
        "texts": texts,
        "words": body.all_words(),
        "variants": chosen,
        **options.request_fields(),
        **({} if labels is None else {"labels": labels}),
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


def _at_most_sync_texts(request: dict) -> None:
    """POST /nsa holds the client while it runs: more texts than MAX_NSA_TEXTS go to POST /nsa/jobs."""
    if len(request["texts"]) > MAX_NSA_TEXTS:
        raise RequestValidationError([{
            "loc": ("body", "texts"), "type": "too_long",
            "msg": f"at most {MAX_NSA_TEXTS} texts in POST /nsa; POST /nsa/jobs takes more",
        }])


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
        request = normalised_request(state, body)
        _at_most_sync_texts(request)
        return Response(attribute_or_reuse(state, request), media_type=JSON)

    @router.get("/nsa/options", summary="NSA's options: JSON schema with defaults, bounds and help")
    async def nsa_options_schema() -> dict:
        return NsaOptions.model_json_schema()

    @router.post(
        "/nsa/upload",
        response_model=NsaStored,
        summary="Attribute over the texts of an uploaded .txt, .csv or .jsonl file",
    )
    def attribute_upload(state: State, form: Annotated[NsaUpload, Form()]) -> Response:
        raw = form.file.file.read(max_upload_bytes + 1)
        if len(raw) > max_upload_bytes:
            raise UploadTooLargeError(
                f"{display_name(form.file.filename)}: larger than the upload limit of "
                f"{max_upload_bytes} bytes"
            )
        records = records_from_upload(form.file.filename, raw, max_texts=MAX_NSA_TEXTS)
        try:
            body = NsaRequest(
                **options_of(form).model_dump(),
                model=form.model,
                texts=[record["text"] for record in records],
                words=_comma_list(form.words, "words", MAX_WORDS) or None,
                text_words=None if form.words else words_from_records(records),
                variants=_comma_list(form.variants, "variants", MAX_VARIANTS),
            )
        except ValidationError as exc:  # the same checks as a JSON body, the same 422
            raise RequestValidationError(exc.errors()) from None
        return Response(attribute_or_reuse(state, normalised_request(state, body)), media_type=JSON)

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
