"""Assemble the NSA result (``schema.NsaResult``) from reduced observations: no model needed.

The service gathers what each step kept (texts with their words, the selection, dense and
variant observations, the statistics of each variant) and ``build_result`` lays it out in the
declared shape and validates it, so the CLI, the API and the dashboard get the same object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from backend.data.encoding import EncodedText
from backend.nsa.compare import (
    TextObservation,
    aggregate_comparisons,
    compare_text,
    heatmap,
    mean_or_none,
    word_activations,
)
from backend.nsa.influential import InfluentialWords
from backend.nsa.schema import RESULT_KIND, SCHEMA_VERSION, validate_result
from backend.nsa.scoring import Selection, activation_magnitude
from backend.nsa.tasks import TaskSpec


@dataclass
class TextRecord:
    """One text after step 1 and the dense pass."""

    encoded: EncodedText
    influential: InfluentialWords
    label: str | None = None
    eligible_neurons: int = 0
    word_checks: list[dict] | None = None  # per influential word: {margin_change, no_effect}

    @property
    def scored(self) -> torch.Tensor:
        """``[tokens]`` True on real tokens (special tokens have an empty character span)."""
        return torch.tensor([end > start for start, end in self.encoded.offsets], dtype=torch.bool)

    @property
    def influential_mask(self) -> torch.Tensor:
        return self.influential.token_mask(len(self.encoded.input_ids)) & self.scored

    @property
    def word_tokens(self) -> list[list[int]]:
        return [location.token_indices for location in self.influential.words]


@dataclass
class VariantRecord:
    """One variant's observations: per text, and the weights its mask removed per neuron."""

    info: dict  # VariantInfo fields
    observations: list[TextObservation]  # per text
    weights_removed: list[dict]  # per selected neuron
    statistics: dict | None = None  # ``stats.variant_statistics``


def variant_info(manifest: dict) -> dict:
    """The manifest summary shown with every result."""
    achieved = manifest.get("achieved_sparsity")
    overall = achieved.get("overall") if isinstance(achieved, dict) else achieved
    return {
        "id": manifest["id"],
        "base_model": manifest.get("base_model"),
        "method": manifest.get("method"),
        "calibration": manifest.get("calibration"),
        "sparsity": None if manifest.get("sparsity") is None else str(manifest.get("sparsity")),
        "achieved_sparsity": overall,
    }


def build_result(
    *,
    model: dict,
    task: TaskSpec,
    settings: dict,
    texts: Sequence[TextRecord],
    selection: Selection,
    dense: Sequence[TextObservation],
    variants: Sequence[VariantRecord] = (),
    ablation: dict | None = None,
    warnings: Sequence[str] = (),
    timings: dict | None = None,
    specificity: Sequence[dict] | None = None,
    statistics: dict | None = None,
    causal: dict | None = None,
) -> dict:
    """The whole NSA result as a JSON-ready dict, validated against ``NsaResult``.

    specificity: per selected neuron (``stats.specificity``); statistics: how they were run;
    causal: the cross-fitted patching/ablation check (``backend.nsa.causal``).
    """
    mode = settings.get("activation", "abs")
    comparisons: dict[str, list[dict]] = {}
    for record in variants:
        comparisons[record.info["id"]] = [
            compare_text(dense[i], record.observations[i], selection, text.influential_mask, text.scored,
                         text.word_tokens, mode)
            for i, text in enumerate(texts)
        ]

    neurons = []
    word_strengths = [word_activations(activation_magnitude(dense[i].activations, mode), text.word_tokens)
                      for i, text in enumerate(texts)]  # per text: [words, selected]
    for k, neuron in enumerate(selection.neurons):
        attributed: list[dict[str, Any]] = [
            {"text": i, "word": location.word, "activation": float(word_strengths[i][w, k])}
            for i, text in enumerate(texts) for w, location in enumerate(text.influential.words)
        ]
        attributed.sort(key=lambda row: (-row["activation"], row["text"]))
        per_variant = {}
        for record in variants:
            rows = [comparison["neurons"][k] for comparison in comparisons[record.info["id"]]]
            per_variant[record.info["id"]] = {
                "drop_influential": mean_or_none([r["drop_influential"] for r in rows]),
                "drop_non_influential": mean_or_none([r["drop_non_influential"] for r in rows]),
                "layer_baseline": mean_or_none([r["layer_baseline"] for r in rows]),
                "weights_removed": record.weights_removed[k],
            }
        neurons.append({
            "rank": k + 1, "layer": neuron.layer, "index": neuron.index, "score": neuron.score,
            "text_scores": neuron.text_scores, "attributed_words": attributed, "variants": per_variant,
            "specificity": specificity[k] if specificity else None,
        })

    comparison = []
    for record in variants:
        vid = record.info["id"]
        per_text = comparisons[vid]
        comparison.append({
            "variant": vid,
            "aggregate": aggregate_comparisons(per_text),
            "texts": [
                {
                    "text": i,
                    **{key: row[key] for key in ("drop_influential", "baseline_all_neurons",
                                                 "baseline_non_influential", "excess_drop")},
                    "words": [{"word": location.word, **row["words"][w]}
                              for w, location in enumerate(texts[i].influential.words)],
                    "neurons": [{"layer": n.layer, "index": n.index, **row["neurons"][k]}
                                for k, n in enumerate(selection.neurons)],
                }
                for i, row in enumerate(per_text)
            ],
            "statistics": record.statistics,
        })

    heatmaps = []
    for i, text in enumerate(texts):
        payload = heatmap(text.encoded.tokens, text.encoded.offsets, selection, dense[i],
                          {record.info["id"]: record.observations[i] for record in variants}, text.scored)
        heatmaps.append({"text": i, **payload})

    result = {
        "schema_version": SCHEMA_VERSION,
        "kind": RESULT_KIND,
        "model": model,
        "task": task.name,
        "settings": settings,
        "variants": [record.info for record in variants],
        "texts": [
            {
                "index": i,
                "text": text.encoded.text,
                "tokens": text.encoded.tokens,
                "offsets": [list(span) for span in text.encoded.offsets],
                "truncated": text.encoded.truncated,
                "label": text.label,
                "influential": _influential_json(text),
                "eligible_neurons": text.eligible_neurons,
            }
            for i, text in enumerate(texts)
        ],
        "neurons": neurons,
        "per_layer_top": [
            {"layer": layer, "neurons": [{"index": index, "score": score} for index, score in top]}
            for layer, top in sorted(selection.per_layer.items())
        ],
        "comparison": comparison,
        "heatmaps": heatmaps,
        "ablation": ablation,
        "statistics": statistics,
        "causal": causal,
        "warnings": list(warnings),
        "timings": dict(timings or {}),
    }
    validate_result(result)
    return result


def _influential_json(text: TextRecord) -> dict:
    """Step 1's answer with the occlusion check of each word merged in."""
    payload = text.influential.to_json()
    if text.word_checks is not None:
        payload["words"] = [{**word, **check} for word, check in zip(payload["words"], text.word_checks, strict=True)]
    return payload


