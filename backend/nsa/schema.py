"""The NSA result's JSON schema (pydantic, versioned): the one declaration of its shape.

The API returns this object, the CLI writes it and the dashboard draws it, and all three
validate against ``NsaResult``; ``backend.nsa.assemble`` builds it. It describes itself:
which model and variants, the texts with tokens and offsets, where the influential words
came from and whether removing them moves the label, the selected neurons with their
specificity, per-variant drops next to their baselines with in-sample and held-out
intervals and the matched null, heatmap payloads, the ablation check and the cross-fitted
causal check (patching, ablation vs matched random neurons, ``backend.nsa.causal``).
Bump ``SCHEMA_VERSION`` (major for removals/renames, minor for additions) with any change.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = "2.0"  # 2.0: ablation = the in-sample check of one text (causal.in_sample_ablation)
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
    margin_change: float | None = Field(None, description="step-1 check: label margin (nats) with the text "
                                        "minus the margin with this word removed; None when not checked")
    no_effect: bool | None = Field(None, description="removing the word moves the margin by less than "
                                   "the check's threshold: flagged, kept")


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


class Specificity(_Strict):
    score: float = Field(description="the neuron's score on the influential tokens (mean over texts)")
    null_mean: float = Field(description="mean score on random token sets of the same size, same texts")
    null_std: float
    z: float | None = Field(description="(score - null_mean) / null_std; None when the null has no spread")
    percentile: float = Field(description="share of the null below the score, in percent")


class NeuronInfo(_Strict):
    rank: int
    layer: int
    index: int
    score: float = Field(description="mean over texts of the per-text score")
    text_scores: list[float]
    attributed_words: list[AttributedWord] = Field(description="influential words, strongest first")
    variants: dict[str, NeuronVariantInfo] = Field(description="per variant, means over texts")
    specificity: Specificity | None = Field(None, description="permutation null of the score (specificity "
                                            "to the words, not to every token)")


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


class Interval(_Strict):
    mean: float | None = Field(description="mean over texts (texts where the figure is defined)")
    low: float | None = Field(description="bootstrap (BCa, over texts) lower bound; None with < 2 texts")
    high: float | None
    n: int = Field(description="texts the mean is over")


class NullSummary(_Strict):
    draws: int = Field(description="random neuron sets matched in layer and dense activation level")
    mean: float = Field(description="their mean excess drop")
    low: float = Field(description="central interval of the null, same confidence as the intervals")
    high: float
    percentile: float = Field(description="where the observed excess drop sits in the null (percent)")
    p_value: float = Field(description="(1 + #null >= observed) / (1 + draws), one-sided")


class FigureSummary(_Strict):
    drop_influential: Interval
    baseline_all_neurons: Interval
    baseline_non_influential: Interval
    excess_drop: Interval
    verdict: str | None = Field(description="'not distinguishable from the baseline' when the excess "
                                "interval contains 0")
    null: NullSummary | None


class WordStatistics(_Strict):
    word: str
    texts: list[int] = Field(description="texts where it is an influential word")
    drop: Interval
    baseline_all_neurons: Interval
    excess_drop: Interval
    verdict: str | None


class VariantStatistics(_Strict):
    in_sample: FigureSummary = Field(description="neurons selected and measured on the same texts")
    held_out: FigureSummary | None = Field(description="cross-fitted: selected on one fold, measured on "
                                           "the other, both ways")
    held_out_note: str | None = Field(description="why there is no held-out figure")
    per_text: dict[str, dict[str, list[float | None]]] = Field(description="{in_sample, held_out?}: "
                                                               "figure -> value per text")
    words: dict[str, list[WordStatistics] | None] = Field(description="{in_sample, held_out}")


class VariantComparison(_Strict):
    variant: str
    aggregate: dict[str, Drop] = Field(description="mean over texts of the text-level figures (in-sample)")
    texts: list[TextComparison]
    statistics: VariantStatistics | None = Field(None, description="intervals, held-out and null; None "
                                                 "when the statistics were turned off")


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
    ablation: dict | None = Field(None, description="one text only: causal.in_sample_ablation (in-sample, "
                                   "matched null); two texts or more: see causal.ablation")
    statistics: dict | None = Field(None, description="how the statistics were computed: split, folds, "
                                    "seed, draws, resamples, confidence")
    causal: dict | None = None  # backend.nsa.causal: cross-fitted patching and ablation with verdicts
    warnings: list[str]
    timings: dict[str, float]


def validate_result(payload: dict) -> NsaResult:
    """Parse a result dict against the schema (raises pydantic.ValidationError if it drifts)."""
    return NsaResult.model_validate(payload)
