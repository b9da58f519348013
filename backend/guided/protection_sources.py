"""Where protected neurons come from: a stored NSA result, NSA run on a task's examples, or a
matched-random draw (the experiment's control).

- ``--protect RESULT_ID[:TOP_K]``: the neurons of a stored NSA result (``nsa_results.db``), best
  first by score, the first TOP_K (default all the result selected). The result must come from
  the model being pruned.
- ``--protect-task sst2 --protect-ratio R``: NSA neuron selection (``backend.nsa.service.attribute``,
  steps 1-2 only) on ``PROTECT_TEXTS`` seeded examples of the task's validation split that are
  not among the evaluation examples (the seeded sample ``limit``/``sample_seed`` of
  ``backend.evaluation.runner``); the top R of all neurons overall (R · layers · neurons, rounded)
  are protected. The texts, how many evaluation examples were excluded and the overlap (0 unless
  the split ran out) go into the manifest.
- ``matched_random``: for each layer, as many neurons as a given protection has there, drawn
  uniformly with a seed (the control arm of ``prunelens experiment protect``).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.errors import NotFoundError, UserError
from backend.pruning.options import DEFAULT_RATIO, PROTECT_TASKS, PROTECT_TEXTS, ProtectOptions
from backend.pruning.protection import DEFAULT_UPWEIGHT_FACTOR, Protection, check_mode

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

RATIO_RANGE = (0.0, 0.5)  # (exclusive, inclusive)
EVALUATION_LIMIT = 200  # the evaluation sample kept apart by default (the experiment's size)


def check_ratio(ratio: float) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not RATIO_RANGE[0] < ratio <= RATIO_RANGE[1]:
        raise UserError(f"--protect-ratio must be in (0, 0.5], got {ratio!r}")
    return float(ratio)


def check_task(task: str) -> str:
    if task not in PROTECT_TASKS:
        raise UserError(f"--protect-task {task!r}: use one of {', '.join(PROTECT_TASKS)}")
    return task


def parse_reference(text: str) -> tuple[str, int | None]:
    """``RESULT_ID`` or ``RESULT_ID:TOP_K`` -> (id, top_k or None)."""
    result_id, _, count = str(text).strip().partition(":")
    if not result_id:
        raise UserError("--protect needs an NSA result id, e.g. --protect 3f2a...:100")
    if not count:
        return result_id, None
    if not count.isdigit() or int(count) < 1:
        raise UserError(f"--protect {text!r}: TOP_K must be a positive integer")
    return result_id, int(count)


def _nsa_result(result_id: str, settings=None) -> dict:
    from backend.config import get_settings
    from backend.nsa.results_store import NsaResultStore

    path = (settings or get_settings()).nsa_db
    if not path.is_file():  # never create an empty database for a lookup
        raise NotFoundError(f"unknown NSA result {result_id!r} (no NSA results stored yet)")
    store = NsaResultStore(path)
    try:
        body = store.require_bytes(result_id)
    except NotFoundError:
        raise NotFoundError(f"unknown NSA result {result_id!r}") from None
    finally:
        store.close()
    return json.loads(body)


def protection_from_result(reference: str, model_name: str, mode: str = "keep",
                           factor: float = DEFAULT_UPWEIGHT_FACTOR, settings=None) -> Protection:
    """The neurons of a stored NSA result (see the module docstring); UserError on any mismatch."""
    check_mode(mode, factor)
    result_id, top_k = parse_reference(reference)
    body = _nsa_result(result_id, settings)
    result = body.get("result") or {}
    result_model = (result.get("model") or {}).get("name") or (body.get("request") or {}).get("model")
    if result_model != model_name:
        raise UserError(f"NSA result {result_id!r} was computed on {result_model!r}, not on {model_name!r}")
    ranked = sorted(result.get("neurons") or [], key=lambda neuron: neuron["rank"])
    if not ranked:
        raise UserError(f"NSA result {result_id!r} has no selected neurons")
    if top_k is not None and top_k > len(ranked):
        raise UserError(f"NSA result {result_id!r} selected {len(ranked)} neurons, fewer than TOP_K={top_k}")
    chosen = ranked[:top_k] if top_k else ranked
    neurons: dict[int, list[int]] = {}
    for neuron in chosen:
        neurons.setdefault(int(neuron["layer"]), []).append(int(neuron["index"]))
    return Protection.create(neurons, mode, factor, source={
        "kind": "nsa_result", "result_id": result_id, "top_k": len(chosen),
        "task": result.get("task", {}).get("name") if isinstance(result.get("task"), dict) else result.get("task")})


def evaluation_texts(task: str, limit: int, sample_seed: int) -> set[str]:
    """The texts of the evaluation sample (``limit`` docs drawn with ``sample_seed``) of ``task``,
    formatted as its labelled examples are, so the two can be compared."""
    from backend.data import prompt_formats
    from backend.evaluation.registry import choose_sources, prepared_tasks
    from backend.evaluation.runner import sample_indices

    formatter: Callable[[dict], dict] = {"sst2": prompt_formats.sst2_example,
                                         "rte": prompt_formats.rte_example}[task]
    with prepared_tasks(choose_sources([task])) as prepared:
        docs = list(prepared.load(task).eval_docs)
    return {formatter(dict(docs[index]))["text"] for index in sample_indices(len(docs), limit, sample_seed)}


def selection_examples(task: str, n_texts: int, seed: int, excluded: set[str]) -> tuple[list[dict], int]:
    """``n_texts`` seeded labelled examples of ``task`` outside ``excluded`` (fewer left: overlap)
    -> (examples, how many of them are in ``excluded``)."""
    pool = [dict(example) for example in _all_examples(task)]  # the whole split, in its order
    outside = [example for example in pool if example["text"] not in excluded]
    rng = random.Random(seed)
    if len(outside) >= n_texts:
        return rng.sample(outside, n_texts), 0
    inside = [example for example in pool if example["text"] in excluded]
    return outside + rng.sample(inside, n_texts - len(outside)), n_texts - len(outside)


def _all_examples(task: str) -> tuple[dict, ...]:
    from backend.data import offline_sets

    return {"sst2": offline_sets.sst2_examples, "rte": offline_sets.rte_examples}[task]()


def protection_from_task(loaded: LoadedModel, task: str, ratio: float, mode: str = "keep",
                         factor: float = DEFAULT_UPWEIGHT_FACTOR, *, n_texts: int = PROTECT_TEXTS,
                         seed: int = 0, evaluation_limit: int = EVALUATION_LIMIT,
                         evaluation_seed: int | None = None, progress=None) -> Protection:
    """NSA's top ``ratio`` of all neurons on ``n_texts`` examples of ``task`` (module docstring)."""
    from backend.evaluation.runner import DEFAULT_SAMPLE_SEED
    from backend.nsa.service import attribute

    check_task(task)
    check_ratio(ratio)
    check_mode(mode, factor)
    sample_seed = DEFAULT_SAMPLE_SEED if evaluation_seed is None else evaluation_seed
    excluded = evaluation_texts(task, evaluation_limit, sample_seed)
    examples, overlap = selection_examples(task, n_texts, seed, excluded)
    layers = len(loaded.adapter.decoder_layers(loaded.model))
    per_layer = loaded.adapter.neuron_count(loaded.model)
    top_k = max(1, round(ratio * layers * per_layer))
    result = attribute(loaded, [{"text": e["text"], "label_text": e["label_text"]} for e in examples],
                       task=PROTECT_TASKS[task], top_k=top_k, seed=seed, split=False, null_draws=0,
                       resamples=0, word_check=False, progress=progress)
    neurons: dict[int, list[int]] = {}
    for neuron in result["neurons"]:
        neurons.setdefault(int(neuron["layer"]), []).append(int(neuron["index"]))
    texts_digest = hashlib.sha256("\n".join(e["text"] for e in examples).encode()).hexdigest()[:16]
    return Protection.create(neurons, mode, factor, source={
        "kind": "nsa_task", "task": task, "nsa_task": PROTECT_TASKS[task], "ratio": ratio,
        "top_k": top_k, "texts": len(examples), "seed": seed, "texts_digest": texts_digest,
        "split": "validation", "evaluation_examples_excluded": len(excluded),
        "evaluation_sample": {"limit": evaluation_limit, "sample_seed": sample_seed},
        "overlap_with_evaluation": overlap,
        "influential_word_sources": sorted({text["influential"]["source"] for text in result["texts"]})})


def matched_random(protection: Protection, neuron_count: int, seed: int = 0) -> Protection:
    """As many neurons per layer as ``protection``, drawn uniformly without replacement (seeded)."""
    rng = random.Random(seed)
    neurons = {layer: rng.sample(range(neuron_count), len(indices))
               for layer, indices in protection.neurons.items()}
    return Protection.create(neurons, protection.mode, protection.factor, source={
        "kind": "matched_random", "seed": seed, "matches": protection.digest()})


@dataclass(frozen=True)
class ProtectionRequest:
    """The protection options of a prune request (CLI flags or HTTP fields), checked before any work.

    ``reference``: ``RESULT_ID[:TOP_K]``; ``task`` + ``ratio``: NSA selection on the task's examples.
    """

    reference: str | None = None
    task: str | None = None
    ratio: float | None = None
    mode: str = "keep"
    factor: float = DEFAULT_UPWEIGHT_FACTOR
    texts: int = PROTECT_TEXTS
    seed: int = 0

    def __post_init__(self) -> None:
        if self.reference is not None and self.task is not None:
            raise UserError("give --protect RESULT_ID or --protect-task TASK, not both")
        if self.ratio is not None and self.task is None:
            raise UserError("--protect-ratio needs --protect-task")
        if self.task is not None:
            check_task(self.task)
            check_ratio(DEFAULT_RATIO if self.ratio is None else self.ratio)
        check_mode(self.mode, self.factor)
        if isinstance(self.texts, bool) or not isinstance(self.texts, int) or not 1 <= self.texts <= 512:
            raise UserError(f"--protect-texts must be an integer in [1, 512], got {self.texts!r}")
        if self.reference is not None:
            parse_reference(self.reference)

    @classmethod
    def of(cls, options: ProtectOptions, seed: int = 0) -> ProtectionRequest:
        """From a prune request's protection fields (``seed``: its window seed draws the texts)."""
        return cls(reference=options.protect, task=options.protect_task, ratio=options.protect_ratio,
                   mode=options.protect_mode, factor=options.protect_factor, texts=options.protect_texts, seed=seed)

    @property
    def wanted(self) -> bool:
        return self.reference is not None or self.task is not None

    def from_store(self, model_name: str, settings=None) -> Protection | None:
        """The protection of a ``reference`` (read now: an unknown id fails before any work)."""
        if self.reference is None:
            return None
        return protection_from_result(self.reference, model_name, self.mode, self.factor, settings)

    def resolve(self, loaded: LoadedModel, settings=None, progress=None) -> Protection | None:
        """The protection for ``loaded`` (runs NSA for ``task``); None when none was asked for."""
        if self.reference is not None:
            return self.from_store(loaded.name, settings)
        if self.task is None:
            return None
        return protection_from_task(loaded, self.task, DEFAULT_RATIO if self.ratio is None else self.ratio,
                                    self.mode, self.factor, n_texts=self.texts, seed=self.seed,
                                    progress=progress)
