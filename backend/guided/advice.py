"""Calibration advice: rank calibration sets for a task before pruning by a cheap proxy, and check
the proxy against accuracy measured after pruning with each set.

Proxy, Wanda mask agreement: on a few decoder layers of the *dense* model, each prunable linear's
input norms ‖X_j‖₂ over a set's calibration windows give that linear's Wanda mask at the target
sparsity; the reference mask comes from windows of the task's own text (another seed). A set's
score is the mean, over those linears, of |pruned by the set ∧ pruned by the task| / |pruned by
the task| (1 = the same mask). One dense forward per set; no pruning, no evaluation.
Validation: Wanda variants calibrated on each set, evaluated on the task (seeded sample), and the
Spearman correlation of score and accuracy with its exact permutation p-value. See
docs/guided-pruning.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backend.errors import UserError
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics

DEFAULT_LAYER_FRACTIONS = (0.1, 0.35, 0.6, 0.85)  # where in depth the proxy looks
REFERENCE_SEED_OFFSET = 1  # the task's reference windows: other windows than a set of that name


class _EnoughLayers(Exception):
    """Stops the forward once the deepest chosen layer has run."""


@dataclass(frozen=True)
class AdviceSettings:
    task: str
    task_text: str  # the text set (or file:PATH) standing for the task's inputs
    sparsity: str = "0.5"
    nsamples: int = 16
    seqlen: int = 256
    seed: int = 0


def chosen_layers(count: int, fractions: Sequence[float] = DEFAULT_LAYER_FRACTIONS) -> list[int]:
    """Decoder layer indices at ``fractions`` of the depth (distinct, in order)."""
    return sorted({min(count - 1, int(fraction * count)) for fraction in fractions})


@torch.no_grad()
def input_norms(loaded, windows: torch.Tensor, layer_indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of each prunable linear's input in the given decoder layers, over ``windows``
    [windows, tokens], on the dense model: ``{"<layer>.<linear>": [in_features]}``."""
    layers = loaded.adapter.decoder_layers(loaded.model)
    statistics: dict[str, InputStatistics] = {}
    handles = []

    def record(name: str):
        def hook(_module, args):
            x = args[0]  # [batch, tokens, in]
            statistics.setdefault(name, InputStatistics(x.shape[-1], "cpu")).update(x)
        return hook

    deepest = max(layer_indices)

    def stop(_module, _args, _output):
        raise _EnoughLayers

    for index in layer_indices:
        for name, module in loaded.adapter.prunable_linears(layers[index]).items():
            handles.append(module.register_forward_pre_hook(record(f"{index}.{name}")))
    handles.append(layers[deepest].register_forward_hook(stop))
    try:
        for batch in windows.split(4):  # [4, tokens]: bounded activation memory
            try:
                loaded.model(input_ids=batch.to(loaded.device), use_cache=False)
            except _EnoughLayers:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: stats.act_norm for name, stats in statistics.items()}


def _weights(loaded, names: Sequence[str]) -> dict[str, torch.Tensor]:
    from backend.models.adapters import weight_matrix

    layers = loaded.adapter.decoder_layers(loaded.model)
    weights = {}
    for name in names:
        index, _, linear = name.partition(".")
        weights[name] = weight_matrix(layers[int(index)].get_submodule(linear))  # [out, in]
    return weights


def mask_agreement(weights: dict[str, torch.Tensor], norms: dict[str, torch.Tensor],
                   reference_norms: dict[str, torch.Tensor], spec: SparsitySpec) -> float:
    """Mean over linears of the share of the reference mask's pruned weights that ``norms``'
    Wanda mask prunes too."""
    shares = []
    for name, weight in weights.items():
        mask = wanda_mask(weight, norms[name], spec)  # [out, in], True = pruned
        reference = wanda_mask(weight, reference_norms[name], spec)
        shares.append(float((mask & reference).sum()) / max(1, int(reference.sum())))
    return sum(shares) / len(shares)


def rank_calibration_sets(loaded, settings: AdviceSettings, sets: Sequence[str], *,
                          progress=None) -> list[dict]:
    """``[{"calibration", "score", "rank"}]``, best (highest mask agreement) first."""
    from backend.data.windows import calibration_windows

    if not sets:
        raise UserError("no calibration sets to rank")
    report = progress or (lambda _fraction, _message: None)
    spec = SparsitySpec.parse(settings.sparsity)
    layer_indices = chosen_layers(len(loaded.adapter.decoder_layers(loaded.model)))

    def norms_of(name: str, seed: int) -> dict[str, torch.Tensor]:
        windows = calibration_windows(loaded.tokenizer, name, settings.nsamples, settings.seqlen, seed,
                                      max_length=loaded.max_length)  # [nsamples, seqlen]
        return input_norms(loaded, windows, layer_indices)

    report(0.0, f"input norms of the task text ({settings.task_text})")
    reference = norms_of(settings.task_text, settings.seed + REFERENCE_SEED_OFFSET)
    weights = _weights(loaded, list(reference))
    scored: list[dict[str, Any]] = []
    for done, name in enumerate(sets):
        report((done + 1) / (len(sets) + 1), f"input norms of {name}")
        scored.append({"calibration": name,
                       "score": mask_agreement(weights, norms_of(name, settings.seed), reference, spec)})
    scored.sort(key=lambda row: -row["score"])
    for rank, row in enumerate(scored, start=1):
        row["rank"] = rank
    return scored


def spearman_with_exact_p(scores: Sequence[float], accuracies: Sequence[float]) -> dict:
    """Spearman's rho (scipy.stats.spearmanr) and its two-sided p-value from all n! pairings
    (scipy.stats.permutation_test; exact for n <= 8)."""
    import numpy as np
    from scipy import stats

    x, y = np.asarray(scores, dtype=float), np.asarray(accuracies, dtype=float)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": None, "p_value": None, "n": len(x)}
    rho = float(stats.spearmanr(x, y).statistic)
    test = stats.permutation_test((x,), lambda a: stats.spearmanr(a, y).statistic, permutation_type="pairings",
                                  n_resamples=math.factorial(min(len(x), 8)) if len(x) <= 8 else 9999,
                                  rng=np.random.default_rng(0))
    return {"rho": rho, "p_value": float(test.pvalue), "n": len(x)}


def task_text_set(task: str, task_text: str | None) -> str:
    """The text set standing for the task's inputs: ``task_text`` or the set named like the task."""
    from backend.data.sources import list_text_sets

    if task_text:
        return task_text
    names = {row["name"] for row in list_text_sets()}
    if task not in names:
        raise UserError(f"task {task!r} has no text set of its own name; pass --task-text NAME or file:PATH "
                        f"(text sets: {', '.join(sorted(names))})")
    return task


def advice_file_name(model: str, task: str) -> str:
    """A file name for a model's advice on a task (model names may hold slashes and paths)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}--{task}").strip("._") + ".json"


def validate_ranking(loaded, settings: AdviceSettings, ranking: list[dict], *, limit: int = 200,
                     sample_seed: int | None = None, progress=None) -> dict:
    """Prune with Wanda on each ranked set (the advice's sparsity, nsamples, seqlen, seed),
    evaluate on the task (``limit`` seeded examples; stored results and variants are reused),
    add each set's accuracy and 95% interval to ``ranking``, and return the dense accuracy and the
    Spearman correlation of score and accuracy (over all sets, and without the task's own set)."""
    from backend.evaluation.runner import DEFAULT_SAMPLE_SEED, evaluate
    from backend.evaluation.uncertainty import normal_interval
    from backend.pruning.engine import PruneConfig, create_variant

    report = progress or (lambda _fraction, _message: None)
    seed = DEFAULT_SAMPLE_SEED if sample_seed is None else sample_seed

    def measured(variant_id: str | None) -> dict:
        [result] = evaluate(loaded, settings.task, variant_id=variant_id, limit=limit, sample_seed=seed)
        accuracy, stderr = result.stored.metric(), result.stored.stderr()
        return {"accuracy": accuracy, "n_examples": result.stored.n_examples,
                "interval": (None if accuracy is None or stderr is None
                             else list(normal_interval(accuracy, stderr)))}

    dense = measured(None)
    for done, row in enumerate(ranking):
        report(done / len(ranking), f"Wanda {settings.sparsity} on {row['calibration']}, then {settings.task}")
        variant = create_variant(loaded, PruneConfig(
            method="wanda", calibration=row["calibration"], spec=SparsitySpec.parse(settings.sparsity),
            nsamples=settings.nsamples, seqlen=settings.seqlen, seed=settings.seed))
        row.update(measured(variant.variant_id), variant_id=variant.variant_id)
    others = [row for row in ranking if row["calibration"] != settings.task_text]
    return {
        "dense": dense, "limit": limit, "sample_seed": seed,
        "all_sets": spearman_with_exact_p([r["score"] for r in ranking], [r["accuracy"] for r in ranking]),
        "without_task_set": spearman_with_exact_p([r["score"] for r in others], [r["accuracy"] for r in others]),
    }


def reading(validation: dict | None) -> str:
    """The honest sentence shown next to the advice."""
    if not validation:
        return "Not validated yet: run `prunelens calibration-advice --validate` to measure whether it predicts."
    found = validation["all_sets"]
    if found["rho"] is None:
        return "The measured accuracies do not vary (or too few sets): the proxy cannot be checked."
    text = (f"Spearman rho between proxy and measured accuracy: {found['rho']:+.2f} over {found['n']} sets "
            f"(exact permutation p = {found['p_value']:.3f}).")
    if found["p_value"] < 0.05 and found["rho"] > 0:
        return text + " The ranking agrees with measured accuracy beyond chance."
    return text + (" The proxy does NOT predict measured accuracy here: do not choose a calibration set by it; "
                   "differences between sets may be within the accuracy intervals.")


def check_request(task: str, sets: Sequence[str] | None, task_text: str | None, sparsity: str,
                  nsamples: int, seqlen: int) -> tuple[str, list[str]]:
    """Everything the user can get wrong, before a model loads: ``(task text set, sets)``."""
    from backend.data.sources import list_text_sets, offline_set_names
    from backend.evaluation.registry import get_task

    get_task(task)
    spec = SparsitySpec.parse(sparsity)
    if spec.kind != "unstructured":
        raise UserError(f"calibration advice ranks Wanda masks at an unstructured sparsity, not {sparsity!r}")
    for value, name in ((nsamples, "nsamples"), (seqlen, "seqlen")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a positive integer, got {value!r}")
    known = {row["name"] for row in list_text_sets()}
    chosen = list(dict.fromkeys(sets)) if sets else offline_set_names()
    unknown = [name for name in [*chosen, task_text or ""] if name and name not in known
               and not name.startswith("file:")]
    if unknown:
        raise UserError(f"unknown text set(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if len(chosen) < 3:
        raise UserError("rank at least 3 calibration sets (a correlation needs them)")
    return task_text_set(task, task_text), chosen


def advice_path(model: str, task: str, cache_settings=None):
    from backend.config import get_settings

    return (cache_settings or get_settings()).cache_dir / "advice" / advice_file_name(model, task)


def save_advice(payload: dict, cache_settings=None) -> None:
    """Write the advice where ``load_advice`` finds it (temp file, then rename)."""
    from backend.storage import write_json_atomic

    path = advice_path(payload["model"], payload["task"], cache_settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)


def load_advice(model: str, task: str, cache_settings=None) -> dict | None:
    import json

    path = advice_path(model, task, cache_settings)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def calibration_advice(loaded, settings: AdviceSettings, sets: Sequence[str], *, validate: bool = False,
                       limit: int = 200, sample_seed: int | None = None, progress=None) -> dict:
    """The ranking (and, with ``validate``, its check against measured accuracy) as one payload."""
    from datetime import UTC, datetime

    ranking = rank_calibration_sets(loaded, settings, sets, progress=progress)
    validation = (validate_ranking(loaded, settings, ranking, limit=limit, sample_seed=sample_seed,
                                   progress=progress) if validate else None)
    layers = chosen_layers(len(loaded.adapter.decoder_layers(loaded.model)))
    return {
        "model": loaded.name, "task": settings.task, "task_text": settings.task_text,
        "method": "wanda", "sparsity": settings.sparsity, "nsamples": settings.nsamples,
        "seqlen": settings.seqlen, "seed": settings.seed, "layers": layers,
        "proxy": (f"Wanda {settings.sparsity} mask agreement with the mask from {settings.task_text} text, "
                  f"dense model, layers {layers}"),
        "ranking": ranking, "validation": validation, "reading": reading(validation),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
