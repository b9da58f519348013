"""NSA's statistics: cross-fitted selection, bootstrap intervals over texts, the matched null.

All of it runs on ``StateSums`` (every neuron's A summed over a text's influential tokens, its
other tokens, and each word), so no model is needed here. For a neuron set F (flat ids) on
text t, with dense sums d and variant sums v:

- ``drop_t = 1 - sum_{j in F} v.on_j / sum_{j in F} d.on_j``
- ``baseline_all_neurons_t = mean_{j in F} (1 - sum_{i in layer(j)} v.on_i / sum_{i in layer(j)} d.on_i)``
- ``baseline_non_influential_t``: as drop_t with ``off`` for ``on``
- ``excess_t = drop_t - baseline_all_neurons_t``

(the same figures as ``compare.compare_text``). In-sample: F selected on all texts, measured on
all texts. Held-out (cross-fitted, >= 4 texts): the texts are split in two seeded folds; F_A is
selected on fold A and measured on fold B, F_B the other way round; every text then has one
held-out value, and the reported figure is their mean. Intervals: ``scipy.stats.bootstrap``
(BCa, seeded) of the mean over texts. Matched null: random sets from the same layers and
activation-level bins (``matched_null``), measured exactly like F; percentile and empirical
p-value of the observed mean excess.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats as scipy_stats

from backend.errors import UserError
from backend.nsa.matched_null import (
    DEFAULT_LEVEL_BINS,
    DEFAULT_NULL_DRAWS,
    matched_null_sets,
    percentile_and_p_value,
)
from backend.nsa.options import DEFAULT_RESAMPLES
from backend.nsa.scoring import Selection, select_neurons
from backend.nsa.sums import StateSums

MIN_SPLIT_TEXTS = 4
CONFIDENCE = 0.95
FIGURES = ("drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop")
NOT_DISTINGUISHABLE = "not distinguishable from the baseline"


@dataclass
class StatsOptions:
    split: bool = True  # cross-fit when there are >= MIN_SPLIT_TEXTS texts
    null_draws: int = DEFAULT_NULL_DRAWS  # 0: no matched null
    resamples: int = DEFAULT_RESAMPLES  # 0: no bootstrap intervals
    confidence: float = CONFIDENCE
    level_bins: int = DEFAULT_LEVEL_BINS
    seed: int = 0


@dataclass
class Fold:
    """Select on ``select_on`` texts, measure on ``measure_on``."""

    select_on: list[int]
    measure_on: list[int]
    selected: torch.Tensor  # [k] flat ids
    null: torch.Tensor | None  # [draws, k] flat ids


@dataclass
class Plan:
    """What to measure, fixed before any variant is seen (depends on the dense model only)."""

    selected: torch.Tensor  # [k] flat ids of the in-sample selection
    null: torch.Tensor | None  # [draws, k]
    folds: list[Fold] = field(default_factory=list)
    held_out_note: str | None = None

    def layers(self, neurons_per_layer: int) -> list[int]:
        """Every layer a measured set (selected or null, any fold) touches."""
        sets = [self.selected] + [fold.selected for fold in self.folds]
        return sorted({int(layer) for ids in sets for layer in (ids // neurons_per_layer).tolist()})


def flat_ids(selection: Selection, neurons_per_layer: int) -> torch.Tensor:
    """``[k]`` flat ids ``layer * neurons_per_layer + index`` in selection order."""
    return torch.tensor([n.layer * neurons_per_layer + n.index for n in selection.neurons], dtype=torch.long)


def fold_split(count: int, seed: int) -> tuple[list[int], list[int]]:
    """Two folds of text indices (sizes floor/ceil of count/2), a seeded random split."""
    order = np.random.default_rng(seed).permutation(count)
    half = count // 2
    return sorted(order[:half].tolist()), sorted(order[half:].tolist())


def _levels(dense: Sequence[StateSums], texts: Sequence[int]) -> torch.Tensor:
    return torch.stack([dense[t].total for t in texts]).sum(0)  # [layers, neurons]


def make_plan(dense: Sequence[StateSums], per_text_scores: Sequence[dict[int, torch.Tensor]],
              selection: Selection, top_k: int, options: StatsOptions) -> Plan:
    """The in-sample set, the two fold selections and the matched null sets."""
    neurons = dense[0].on.shape[1]
    count = len(dense)
    selected = flat_ids(selection, neurons)
    everything = list(range(count))

    def null_for(ids: torch.Tensor, texts: Sequence[int], salt: int) -> torch.Tensor | None:
        if not options.null_draws:
            return None
        # A selection crowding one (layer, level bin) cell (small models, large top-k) gets
        # coarser bins: halve until every cell has enough unselected neurons; none at all when
        # even one bin per layer is too few (the selection holds over half of a layer).
        bins = options.level_bins
        while bins >= 1:
            try:
                return matched_null_sets(_levels(dense, texts), ids, draws=options.null_draws, bins=bins,
                                         seed=options.seed * 1000 + salt)
            except UserError:
                bins //= 2
        return None

    plan = Plan(selected=selected, null=null_for(selected, everything, 0))
    if not options.split:
        plan.held_out_note = "cross-fitting turned off (--no-split): only in-sample figures"
    elif count < MIN_SPLIT_TEXTS:
        plan.held_out_note = (f"no held-out figure: cross-fitting needs at least {MIN_SPLIT_TEXTS} texts "
                              f"(two folds of two), this result has {count}")
    else:
        first, second = fold_split(count, options.seed)
        for salt, (select_on, measure_on) in enumerate(((first, second), (second, first)), start=1):
            chosen = select_neurons([per_text_scores[t] for t in select_on], min(top_k, selected.numel()))
            ids = flat_ids(chosen, neurons)
            plan.folds.append(Fold(select_on, measure_on, ids, null_for(ids, select_on, salt)))
    return plan


# ----------------------------------------------------------------------------- figures of neuron sets


def _ratio_drop(variant: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``1 - variant / dense`` elementwise, NaN where the dense mass is 0 (float64)."""
    dense, variant = dense.double(), variant.double()
    return torch.where(dense > 0, 1 - variant / dense.clamp_min(1e-300), torch.nan)


def set_figures(dense: StateSums, variant: StateSums, sets: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four figures of each set on one text: sets ``[draws, k]`` flat ids -> ``{figure: [draws]}``."""
    neurons = dense.on.shape[1]
    layer_of = sets // neurons  # [draws, k]

    def drop(part: str) -> torch.Tensor:
        d, v = getattr(dense, part).reshape(-1), getattr(variant, part).reshape(-1)
        return _ratio_drop(v[sets].sum(-1), d[sets].sum(-1))

    layer_drops = _ratio_drop(variant.on.sum(1), dense.on.sum(1))  # [layers]
    baseline = layer_drops[layer_of].nanmean(-1)
    influential = drop("on")
    return {"drop_influential": influential, "baseline_all_neurons": baseline,
            "baseline_non_influential": drop("off"), "excess_drop": influential - baseline}


def word_figures(dense: StateSums, variant: StateSums, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per influential word of one text, one set ``[k]``: ``{drop, baseline_all_neurons, excess_drop}``
    each ``[words]``; a word's activation is the max of A over its tokens."""
    words_dense = dense.words.flatten(1)  # [words, layers * neurons]
    words_variant = variant.words.flatten(1)
    drop = _ratio_drop(words_variant[:, ids].sum(-1), words_dense[:, ids].sum(-1))
    layer_drops = _ratio_drop(variant.words.sum(2), dense.words.sum(2))  # [words, layers]
    baseline = layer_drops[:, ids // dense.on.shape[1]].nanmean(-1)
    return {"drop": drop, "baseline_all_neurons": baseline, "excess_drop": drop - baseline}


# ----------------------------------------------------------------------------- intervals


def interval(values: Sequence[float], options: StatsOptions) -> dict:
    """Mean over texts with a seeded bootstrap interval: ``{mean, low, high, n}``.

    Undefined values (NaN) are left out. With fewer than 2 values, or resamples = 0, the
    bounds are None; with no spread at all they equal the mean.
    """
    data = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not data.size:
        return {"mean": None, "low": None, "high": None, "n": 0}
    mean = float(data.mean())
    low = high = None
    if data.size >= 2 and options.resamples:
        if np.ptp(data) == 0:
            low = high = mean
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # BCa's degenerate-sample warning: handled below
                result = scipy_stats.bootstrap((data,), np.mean, n_resamples=options.resamples,
                                               confidence_level=options.confidence, method="BCa",
                                               rng=np.random.default_rng(options.seed))
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
            if not (np.isfinite(low) and np.isfinite(high)):
                low = high = None
    return {"mean": mean, "low": low, "high": high, "n": int(data.size)}


def verdict(excess: dict) -> str | None:
    """How an excess drop reads next to its interval."""
    if excess["mean"] is None:
        return None
    if excess["low"] is None:
        return "no interval (fewer than 2 texts)"
    if excess["low"] <= 0.0 <= excess["high"]:
        return NOT_DISTINGUISHABLE
    return "larger drop than the baseline" if excess["low"] > 0 else "smaller drop than the baseline"


def _summary(per_text: dict[str, np.ndarray], null_excess: np.ndarray | None, options: StatsOptions) -> dict:
    """per_text: ``{figure: [texts]}``; null_excess: ``[texts, draws]`` excess of the null sets."""
    figures = {name: interval(per_text[name].tolist(), options) for name in FIGURES}
    summary = {**figures, "verdict": verdict(figures["excess_drop"]), "null": None}
    observed = figures["excess_drop"]["mean"]
    if null_excess is not None and observed is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw silent on every text: NaN
            draws = np.nanmean(null_excess, axis=0)  # [draws] the null's mean excess over texts
        draws = draws[np.isfinite(draws)]
        percentile, p_value = percentile_and_p_value(observed, torch.from_numpy(draws))
        summary["null"] = {
            "draws": int(draws.size), "mean": float(draws.mean()),
            "low": float(np.quantile(draws, (1 - options.confidence) / 2)),
            "high": float(np.quantile(draws, (1 + options.confidence) / 2)),
            "percentile": percentile, "p_value": p_value,
        }
    return summary


def _measure(dense, variant, assignments: Sequence[tuple[list[int], torch.Tensor, torch.Tensor | None]]):
    """Per text figures ``{figure: [texts]}`` and null excess ``[texts, draws]`` (or None)."""
    count = len(dense)
    per_text = {name: np.full(count, np.nan) for name in FIGURES}
    null_excess = None
    for texts, ids, null in assignments:
        for t in texts:
            figures = set_figures(dense[t], variant[t], ids[None])
            for name in FIGURES:
                per_text[name][t] = float(figures[name][0])
            if null is not None:
                if null_excess is None:
                    null_excess = np.full((count, null.shape[0]), np.nan)
                null_excess[t] = set_figures(dense[t], variant[t], null)["excess_drop"].numpy()
    return per_text, null_excess


def _word_rows(dense, variant, words: Sequence[Sequence[str]], ids_of_text, options: StatsOptions) -> list[dict]:
    """Per distinct word (case-insensitive) over the texts holding it: intervals of its figures."""
    values: dict[str, dict] = {}
    for t, text_words in enumerate(words):
        ids = ids_of_text(t)
        if ids is None:
            continue
        figures = word_figures(dense[t], variant[t], ids)
        for w, word in enumerate(text_words):
            entry = values.setdefault(word.lower(), {"word": word, "texts": [],
                                                     **{name: [] for name in figures}})
            entry["texts"].append(t)
            for name, column in figures.items():
                entry[name].append(float(column[w]))
    rows = []
    for entry in values.values():
        row = {"word": entry["word"], "texts": entry["texts"]}
        for name in ("drop", "baseline_all_neurons", "excess_drop"):
            row[name] = interval(entry[name], options)
        row["verdict"] = verdict(row["excess_drop"])
        rows.append(row)
    return rows


def variant_statistics(plan: Plan, dense: Sequence[StateSums], variant: Sequence[StateSums],
                       words: Sequence[Sequence[str]], options: StatsOptions) -> dict:
    """In-sample and held-out figures of one variant, side by side, with intervals and null."""
    count = len(dense)
    in_texts, in_null = _measure(dense, variant, [(list(range(count)), plan.selected, plan.null)])
    result: dict[str, Any] = {
        "in_sample": _summary(in_texts, in_null, options),
        "held_out": None,
        "held_out_note": plan.held_out_note,
        "per_text": {"in_sample": {name: _listed(values) for name, values in in_texts.items()}},
    }
    fold_of = {t: fold for fold in plan.folds for t in fold.measure_on}
    if plan.folds:
        held_texts, held_null = _measure(dense, variant, [(f.measure_on, f.selected, f.null) for f in plan.folds])
        result["held_out"] = _summary(held_texts, held_null, options)
        result["per_text"]["held_out"] = {name: _listed(values) for name, values in held_texts.items()}
    result["words"] = {
        "in_sample": _word_rows(dense, variant, words, lambda t: plan.selected, options),
        "held_out": _word_rows(dense, variant, words, lambda t: fold_of[t].selected, options) if plan.folds else None,
    }
    return result


def _listed(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]


# ----------------------------------------------------------------------------- specificity


def specificity(columns: Sequence[torch.Tensor], influential: Sequence[torch.Tensor], scored: Sequence[torch.Tensor],
                eligible: torch.Tensor, *, draws: int = DEFAULT_NULL_DRAWS, seed: int = 0) -> list[dict]:
    """How specific each selected neuron is to the influential words: a permutation null.

    columns: per text ``[tokens, k]`` A of the selected neurons (dense); influential, scored:
    per text ``[tokens]`` bool; eligible: ``[texts, k]`` bool (the negligible rule: 0 if not).
    The null replaces each text's influential tokens by the same number of random real tokens
    of that text (``draws`` times), and recomputes the neuron's score (mean over texts). Returns
    per neuron ``{score, null_mean, null_std, z, percentile}``: a neuron that fires on every
    token (massive-activation or position neurons) sits near the null; one tied to the words
    is far above it.
    """
    generator = torch.Generator().manual_seed(seed)
    k = eligible.shape[1]
    observed = torch.zeros(k, dtype=torch.float64)
    null = torch.zeros((draws, k), dtype=torch.float64)
    for t, activations in enumerate(columns):
        real = activations[scored[t]].double()  # [real tokens, k]
        on = (influential[t] & scored[t])[scored[t]]  # [real tokens]
        total = real.sum(0).clamp_min(1e-300)
        keep = eligible[t].double()
        observed += keep * real[on].sum(0) / total
        picks = torch.rand((draws, real.shape[0]), generator=generator).argsort(1)[:, : int(on.sum())]
        null += keep * real[picks].sum(1) / total  # [draws, k]
    observed /= len(columns)
    null /= len(columns)
    mean, std = null.mean(0), null.std(0)
    rows = []
    for j in range(k):
        percentile, _ = percentile_and_p_value(float(observed[j]), null[:, j])
        rows.append({
            "score": float(observed[j]), "null_mean": float(mean[j]), "null_std": float(std[j]),
            "z": float((observed[j] - mean[j]) / std[j]) if std[j] > 0 else None, "percentile": percentile,
        })
    return rows
