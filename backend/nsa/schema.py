"""The NSA result: its JSON schema (pydantic, versioned) and the pure function that builds it.

The API returns this object and the frontend draws it, so it describes itself: which model
and variants, the texts with tokens and offsets, where the influential words came from,
the selected neurons, per-variant drops next to their baselines, heatmap payloads and the
ablation check. ``build_result`` needs no model: everything it reads is already reduced.
Bump ``SCHEMA_VERSION`` (major for removals/renames, minor for additions) with any change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field

from backend.nsa.capture import EncodedText
from backend.nsa.compare import (
    TextObservation,
    aggregate_comparisons,
    compare_text,
    heatmap,
    mean_or_none,
    word_activations,
)
from backend.nsa.influential import InfluentialWords
from backend.nsa.scoring import Selection, activation_magnitude
from backend.nsa.tasks import TaskSpec

SCHEMA_VERSION = "1.0"
RESULT_KIND = "prunelens.nsa"

Drop = float | None  # None where the dense activation it divides by is 0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Strict):
    name: str
    family: str
    layers: int
    neurons_per_layer: int


class VariantInfo(_Strict):
    id: str
    base_model: str | None = None
    method: str | None = None
    calibration: str | None = None
    sparsity: str | None = Field(None, description="spec label, e.g. '0.5' or '2:4'")
    achieved_sparsity: float | None = Field(None, description="overall share of pruned weights")


class WordInfo(_Strict):
    word: str = Field(description="as it first appears in the text")
    spans: list[list[int]] = Field(description="[start, end) character spans of each occurrence")
    tokens: list[int] = Field(description="indices of the tokens covering the occurrences")


class InfluentialInfo(_Strict):
    source: str = Field(description="'user', 'model' or 'fallback:<method>'")
    words: list[WordInfo]
    raw_generation: str | None = Field(description="the model's step-1 answer, as generated")
    rejected: list[dict] = Field(description="{word, reason} the parser dropped")
    missing: list[str] = Field(description="requested words that do not occur in the text")
    note: str | None = None
    attribution: list[dict] | None = Field(None, description="fallback: {word, score} per candidate")


class TextInfo(_Strict):
    index: int
    text: str
    tokens: list[str]
    offsets: list[list[int]] = Field(description="[start, end) character span of each token")
    truncated: bool = Field(description="the text was cut to the model's context")
    label: str | None = Field(None, description="gold label when the text came from a dataset")
    influential: InfluentialInfo
    eligible_neurons: int = Field(description="neurons above the negligible-activation bar, all layers")


class AttributedWord(_Strict):
    text: int
    word: str
    activation: float = Field(description="max over the word's tokens of A in the dense model")


class NeuronVariantInfo(_Strict):
    drop_influential: Drop
    drop_non_influential: Drop
    layer_baseline: Drop = Field(description="drop of all neurons of this layer on the influential tokens")
    weights_removed: dict[str, float] = Field(description="fraction of the neuron's weights pruned: "
                                              "fraction (all), inputs (gate/up or fc1 rows), output (column)")


class NeuronInfo(_Strict):
    rank: int
    layer: int
    index: int
    score: float = Field(description="mean over texts of the per-text score")
    text_scores: list[float]
    attributed_words: list[AttributedWord] = Field(description="influential words, strongest first")
    variants: dict[str, NeuronVariantInfo] = Field(description="per variant, means over texts")


class LayerTop(_Strict):
    layer: int
    neurons: list[dict] = Field(description="{index, score}, best first")


class WordDrop(_Strict):
    word: str
    drop: Drop = Field(description="selected neurons' drop on this word")
    baseline_all_neurons: Drop


class NeuronTextDrop(_Strict):
    layer: int
    index: int
    drop_influential: Drop
    drop_non_influential: Drop
    layer_baseline: Drop
    word_drops: list[Drop] = Field(description="aligned with the text's influential words")


class TextComparison(_Strict):
    text: int
    drop_influential: Drop
    baseline_all_neurons: Drop
    baseline_non_influential: Drop
    excess_drop: Drop = Field(description="drop_influential - baseline_all_neurons")
    words: list[WordDrop]
    neurons: list[NeuronTextDrop]


class VariantComparison(_Strict):
    variant: str
    aggregate: dict[str, Drop] = Field(description="mean over texts of the text-level figures")
    texts: list[TextComparison]


class HeatmapNeuron(_Strict):
    layer: int
    index: int
    scale: float = Field(description="dense max |a| over the text: one colour scale for all rows")
    dense: list[float] = Field(description="signed activation per token")
    variants: dict[str, list[float]]


class Heatmap(_Strict):
    text: int
    tokens: list[str]
    offsets: list[list[int]]
    neurons: list[HeatmapNeuron]


class NsaResult(_Strict):
    schema_version: str
    kind: str
    model: ModelInfo
    task: str
    settings: dict
    variants: list[VariantInfo]
    texts: list[TextInfo]
    neurons: list[NeuronInfo]
    per_layer_top: list[LayerTop]
    comparison: list[VariantComparison]
    heatmaps: list[Heatmap]
    ablation: dict | None
    causal: dict | None = None  # backend.nsa.causal: cross-fitted patching and ablation with verdicts
    warnings: list[str]
    timings: dict[str, float]


# ----------------------------------------------------------------------------- building


@dataclass
class TextRecord:
    """One text after step 1 and the dense pass."""

    encoded: EncodedText
    influential: InfluentialWords
    label: str | None = None
    eligible_neurons: int = 0

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
) -> dict:
    """The whole NSA result as a JSON-ready dict (validates against ``NsaResult``)."""
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
        attributed = [
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
        })

    heatmaps = []
    for i, text in enumerate(texts):
        payload = heatmap(text.encoded.tokens, text.encoded.offsets, selection, dense[i],
                          {record.info["id"]: record.observations[i] for record in variants}, text.scored)
        heatmaps.append({"text": i, **payload})

    return {
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
                "influential": text.influential.to_json(),
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
        "warnings": list(warnings),
        "timings": dict(timings or {}),
    }


def validate_result(payload: dict) -> NsaResult:
    """Parse a result dict against the schema (raises pydantic.ValidationError if it drifts)."""
    return NsaResult.model_validate(payload)
