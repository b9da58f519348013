"""Cross-fitted causal checks of an NSA selection: patching in each variant, ablation in the dense model.

Neurons chosen for their score on some examples look special on those examples by construction,
so they are tested on other ones: the labelled examples are split in two folds
(``backend.nsa.stats.fold_split``, the same seeded folds as the held-out statistics), the neurons
selected on one fold are patched and ablated on the other, and
the per-example margins of both folds are pooled. Every comparison is against matched-random
sets (``backend.nsa.matched_null``: same layers, same dense activation level on the selection
fold), run in the same batched forward passes as the selected set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from backend.errors import UserError
from backend.nsa.matched_null import DEFAULT_LEVEL_BINS, matched_null_sets
from backend.nsa.patching import (
    ALL_ROW,
    FIRST_ABLATION_DRAW_ROW,
    FIRST_DRAW_ROW,
    SELECTED_ROW,
    VARIANT_ROW,
    ablated_log_probs,
    condition_masks,
    dense_run,
    flat_to_rows,
    patched_log_probs,
)
from backend.nsa.probe import ProbeEncoding, encode_probe, margin
from backend.nsa.scoring import select_neurons
from backend.nsa.stats import fold_split
from backend.nsa.verdict import (
    ablation_reading,
    ablation_summary,
    patching_reading,
    recovery_summary,
    verdict_rows,
)

CAUSAL_DRAWS = 20
Progress = Callable[[float, str], None]
# (name, apply): ``apply()`` is a context manager yielding the variant as a torch model.
VariantSource = tuple[str, Callable[[], AbstractContextManager]]


def two_folds(count: int, seed: int = 0) -> list[list[int]]:
    """The statistics' seeded folds (``stats.fold_split``), so the held-out excess drop and this
    check see one split; refuses fewer than 2 examples."""
    if count < 2:
        raise UserError("the cross-fitted check needs at least 2 labelled examples "
                        "(neurons are selected on some and tested on others)")
    return list(fold_split(count, seed))


@dataclass
class FoldSelection:
    """Neurons selected on the other fold, tested on ``test`` (example indices)."""

    test: list[int]
    selected: torch.Tensor  # [k] flat ids layer * neurons_per_layer + index


def crossfit_selections(per_text_scores: Sequence[dict[int, torch.Tensor]], top_k: int,
                        neurons_per_layer: int, seed: int = 0) -> list[FoldSelection]:
    """For each fold, the top-k neurons by NSA score on the *other* fold's texts."""
    folds = two_folds(len(per_text_scores), seed)
    plans = []
    for test, other in ((folds[0], folds[1]), (folds[1], folds[0])):
        selection = select_neurons([per_text_scores[i] for i in other], top_k)
        flat = [n.layer * neurons_per_layer + n.index for n in selection.neurons]
        plans.append(FoldSelection(test=test, selected=torch.tensor(flat, dtype=torch.long)))
    return plans


def _null_draws(levels: torch.Tensor, selected: torch.Tensor, draws: int, seed: int) -> tuple[torch.Tensor, int]:
    """Matched draws with the most level bins that every (layer, bin) cell can fill."""
    bins = DEFAULT_LEVEL_BINS
    while True:
        try:
            return matched_null_sets(levels, selected, draws=draws, bins=bins, seed=seed), bins
        except UserError:
            if bins == 1:
                raise
            bins //= 2


def _margins(log_probs: torch.Tensor, label: int) -> np.ndarray:
    return margin(log_probs, label).double().numpy()  # [rows]


def _report(progress: Progress | None, done: int, total: int, message: str) -> None:
    if progress is not None:
        progress(done / max(total, 1), message)


@torch.inference_mode()
def causal_check(model, adapter, probes: Sequence[ProbeEncoding], labels: Sequence[int],
                 folds: Sequence[FoldSelection], *, variants: Sequence[VariantSource] = (),
                 ablate: bool = True, draws: int = CAUSAL_DRAWS, seed: int = 0,
                 progress: Progress | None = None) -> dict:
    """Patch each fold's selection in every variant, and zero it in the dense ``model``.

    ``labels[i]``: index of example i's gold label word, or None to use the dense model's
    prediction (ablation only: patching measures what a variant lost against the truth).
    Returns the summaries of ``backend.nsa.verdict`` with their one-line readings.
    """
    if draws < 1:
        raise UserError("draws must be at least 1")
    width = adapter.neuron_count(model)
    fold_of = {i: f for f, fold in enumerate(folds) for i in fold.test}
    keep = {f: sorted({int(flat) // width for flat in fold.selected.tolist()}) for f, fold in enumerate(folds)}
    total = len(probes) * (1 + int(ablate) + len(variants))
    runs = []
    for i, probe in enumerate(probes):
        _report(progress, i, total, f"dense pass {i + 1}/{len(probes)}")
        runs.append(dense_run(model, adapter, probe, labels[i], keep[fold_of[i]] if variants else []))
    label_source = "gold" if all(label is not None for label in labels) else "dense prediction where missing"
    labels = [int(run.log_probs.argmax()) if label is None else label for run, label in zip(runs, labels, strict=True)]
    # Each fold's null is matched on the activation levels of the fold its neurons were chosen on.
    null, bins = [], []
    for f, fold in enumerate(folds):
        chosen_on = [i for i in range(len(probes)) if fold_of[i] != f] or list(fold.test)
        levels = torch.stack([runs[i].levels for i in chosen_on]).mean(0)  # [layers, neurons]
        fold_draws, fold_bins = _null_draws(levels, fold.selected, draws, seed + f)
        null.append(fold_draws)
        bins.append(fold_bins)
    order = [i for fold in folds for i in fold.test]  # examples in pooled order
    done = len(probes)
    dense_margins = np.array([float(margin(runs[i].log_probs, labels[i])) for i in order])

    ablation = None
    if ablate:
        rows_by_fold = [flat_to_rows(fold.selected, null[f], width) for f, fold in enumerate(folds)]
        margin_rows = []
        for i in order:
            ablated = ablated_log_probs(model, adapter, probes[i], rows_by_fold[fold_of[i]])
            margin_rows.append(_margins(ablated, labels[i]))
            done += 1
            _report(progress, done, total, f"ablation {done - len(probes)}/{len(probes)}")
        margins = np.stack(margin_rows)  # [examples, rows]
        ablation = ablation_summary(margins[:, 0], margins[:, 1], margins[:, FIRST_ABLATION_DRAW_ROW:], seed=seed)
        ablation["reading"] = ablation_reading(ablation, _neurons(folds))

    patching = []
    masks = [condition_masks(fold.selected, null[f], width) for f, fold in enumerate(folds)]
    for name, apply in variants:
        margin_rows = []
        with apply() as variant_model:
            for i in order:
                log_probs = patched_log_probs(variant_model, adapter, runs[i], masks[fold_of[i]])
                margin_rows.append(_margins(log_probs, labels[i]))
                done += 1
                _report(progress, done, total, f"patching in {name}: example {len(margin_rows)}/{len(order)}")
        margins = np.stack(margin_rows)  # [examples, rows]
        summary = recovery_summary(dense_margins, margins[:, VARIANT_ROW], margins[:, SELECTED_ROW],
                                   margins[:, ALL_ROW], margins[:, FIRST_DRAW_ROW:], seed=seed)
        patching.append({"variant": name, **summary, "reading": patching_reading(summary, _neurons(folds))})

    result = {
        "method": "cross-fitted: two folds; neurons selected on one fold are tested on the other, "
                  "margins of both folds pooled",
        "draws": draws,
        "seed": seed,
        "level_bins": bins,
        "label_source": label_source,
        "folds": [{"test_examples": fold.test,
                   "neurons": [[int(flat) // width, int(flat) % width] for flat in fold.selected.tolist()]}
                  for fold in folds],
        "examples": [{"index": i, "label": int(labels[i]), "dense_margin": float(m)}
                     for i, m in zip(order, dense_margins, strict=True)],
        "ablation": ablation,
        "patching": patching,
    }
    result["verdict"] = verdict_rows(result)  # flat rows for CSV export and the dashboard's cards
    return result


IN_SAMPLE_METHOD = ("in-sample: the neurons were selected on this very text and zeroed on it, so the "
                    "effect is biased upward; give two labelled texts or more for the cross-fitted check")


@torch.inference_mode()
def in_sample_ablation(model, adapter, probe: ProbeEncoding, label: int | None, selected: torch.Tensor, *,
                       draws: int = CAUSAL_DRAWS, seed: int = 0) -> dict:
    """Zeroing in the dense model for ONE text, the one the neurons were selected on.

    Nothing is held out, so the figure cannot be cross-fitted; it is still compared with the
    same matched null as the cross-fitted check (same layers, same dense activation level on
    this text) and labelled in-sample in its method and reading. ``selected``: ``[k]`` flat ids.
    """
    if draws < 1:
        raise UserError("draws must be at least 1")
    width = adapter.neuron_count(model)
    run = dense_run(model, adapter, probe, label, [])
    label_source = "gold" if label is not None else "dense prediction"
    label = int(run.log_probs.argmax()) if label is None else label
    null, bins = _null_draws(run.levels, selected, draws, seed)
    margins = _margins(ablated_log_probs(model, adapter, probe, flat_to_rows(selected, null, width)), label)
    summary = ablation_summary(margins[None, 0], margins[None, 1], margins[None, FIRST_ABLATION_DRAW_ROW:], seed=seed)
    reading = ablation_reading(summary, int(selected.numel()))
    return {"method": IN_SAMPLE_METHOD, "draws": draws, "seed": seed, "level_bins": [bins],
            "label_source": label_source, "label": label,
            **summary, "reading": "In-sample (selected on this text): " + reading[0].lower() + reading[1:]}


def _neurons(folds: Sequence[FoldSelection]) -> int:
    return max(int(fold.selected.numel()) for fold in folds)


def check_patch_request(rows: list[dict], spec, manifests: list[dict]) -> None:
    """Patching compares a variant with the truth: it needs variants and a gold label per text."""
    if not manifests:
        raise UserError("patching needs at least one variant (--variants)")
    if len(rows) < 2:
        raise UserError("patching needs at least 2 labelled texts (neurons are selected on some, tested on others)")
    unlabelled = [i for i, row in enumerate(rows) if spec.label_index(row.get("label_text")) is None]
    if unlabelled:
        raise UserError(f"patching needs a label for every text ({', '.join(w.strip() for w in spec.label_words)}); "
                        f"{len(unlabelled)} text(s) have none, e.g. text {unlabelled[0]}")


def causal_on_records(loaded, spec, records, per_text_scores: Sequence[dict[int, torch.Tensor]],
                      manifests: Sequence[dict], *, top_k: int, ablate: bool, draws: int, seed: int, settings,
                      progress: Progress | None) -> dict:
    """The cross-fitted check on NSA's attributed texts (``service.attribute``): the step-2 scores
    of one fold select the neurons tested on the other; ``manifests``: the variants to patch."""
    from backend.pruning.variants import variant_applied

    @contextmanager
    def applied(variant_id: str):
        with variant_applied(loaded, variant_id, settings):
            yield loaded.model

    neuron_count = loaded.adapter.neuron_count(loaded.model)
    folds = crossfit_selections(per_text_scores, top_k, neuron_count, seed)
    probes = [encode_probe(loaded.tokenizer, r.encoded.text, spec, loaded.max_length) for r in records]
    labels = [spec.label_index(r.label) for r in records]
    variants = [(m["id"], lambda vid=m["id"]: applied(vid)) for m in manifests]
    return causal_check(loaded.model, loaded.adapter, probes, labels, folds, variants=variants, ablate=ablate,
                        draws=draws, seed=seed, progress=progress)
