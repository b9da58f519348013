"""``build_index``: the single-process build of a neuron index, reused when it already exists."""

from __future__ import annotations

from collections.abc import Callable

from backend.neurons.build import IndexInputs, Progress, accumulate
from backend.neurons.models import check_variants, load_index_models, model_name
from backend.neurons.request import IndexRequest
from backend.neurons.store import discard_partial, index_exists, index_id
from backend.neurons.writer import write_index


def checked_index_id(request: IndexRequest) -> str:
    """The id ``request`` would build, after checking what can be checked without loading a model
    (variants of this model, a readable corpus file): bad input fails here, before any work."""
    check_variants(request)
    return index_id(request, model_name(request))


def build_index(request: IndexRequest, *, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None) -> str:
    """Build (or reuse) the index of ``request``; returns its id. A killed build leaves only a
    staging folder, removed here before starting over."""
    report = progress or (lambda _fraction, _message: None)
    target = checked_index_id(request)
    if index_exists(target):
        report(1.0, f"reused existing index {target}")
        return target
    discard_partial(target)
    report(0.0, "loading the models")
    dense, variants = load_index_models(request)
    inputs = IndexInputs.prepare(request, dense)
    documents = range(len(inputs.corpus.documents))

    def pass_progress(fraction: float, message: str) -> None:
        report(0.02 + 0.93 * fraction, message)

    state = accumulate(dense, variants, inputs, documents, progress=pass_progress, should_stop=should_stop)
    report(0.96, "writing the index")
    write_index(state, inputs, dense.tokenizer, target)
    report(1.0, f"index {target}")
    return target
