"""Dense-vs-variant agreement per neuron and its split-half chance floor, from a finished state.

* pearson: correlation of a_dense and a_variant over all counted tokens (from running sums);
* mass_ratio = Σ|a_variant| / Σ|a_dense|, mass_lost = 1 - mass_ratio;
* topk_overlap: shared (document, position) of the dense and variant top-k / dense examples kept;
* the floor: documents split by parity into halves A and B. Token profile = mean activation per
  profile token (the corpus' most frequent token ids). profile_correlation_floor =
  pearson(dense_A, dense_B); profile_correlation = mean of pearson(dense_A, variant_B) and
  pearson(variant_A, dense_B): both cross the halves, so both carry the same sampling noise.
  token_overlap(_floor): the same with the multiset overlap of the focus tokens of the positive
  top-k in each half. A neuron is ``not_distinguishable`` (from corpus noise) when neither change
  statistic is below its floor (a missing value, e.g. a dead neuron, counts as not below).
"""

from __future__ import annotations

import numpy as np
import torch

from backend.neurons.accumulators import IndexState, LayerStats
from backend.neurons.corpus import KEY_EMPTY, POSITION_BITS
from backend.neurons.topk import TopK


def pearson_from_sums(count: int, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Pearson r per neuron from float64 sums; NaN where either side is constant."""
    covariance = sxy - sx * sy / count
    var_x, var_y = sxx - sx * sx / count, syy - sy * sy / count
    with np.errstate(invalid="ignore", divide="ignore"):
        r = covariance / np.sqrt(var_x * var_y)
    return np.where((var_x > 0) & (var_y > 0), np.clip(r, -1.0, 1.0), np.nan)


def rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x``, ``y`` [N, P]; NaN for a constant row."""
    xc, yc = x - x.mean(1, keepdims=True), y - y.mean(1, keepdims=True)
    denominator = np.sqrt((xc * xc).sum(1) * (yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(1) / denominator, np.nan)


def overall_top(stats: LayerStats, side: str) -> TopK:
    return stats.top[(0, side)].merge(stats.top[(1, side)])


def key_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|keys(a) ∩ keys(b)| / filled(a) per row ([N, k] keys, KEY_EMPTY empty); NaN when a is empty."""
    filled = (a != KEY_EMPTY)
    shared = ((a[:, :, None] == b[:, None, :]) & filled[:, :, None]).any(2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(filled.sum(1) > 0, shared / filled.sum(1), np.nan)


def multiset_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Σ_token min(count_a, count_b) / min(filled a, filled b) per row; token ids [N, k], -1 empty."""
    def occurrence(tokens: np.ndarray) -> np.ndarray:  # i-th occurrence of its token in the row
        earlier = np.tri(tokens.shape[1], k=-1, dtype=bool)[None]  # [1, i, j]: j < i
        return ((tokens[:, :, None] == tokens[:, None, :]) & earlier).sum(2)

    ra, rb = occurrence(a), occurrence(b)
    match = (a[:, :, None] == b[:, None, :]) & (ra[:, :, None] == rb[:, None, :]) & (a[:, :, None] >= 0)
    shared = match.any(2).sum(1)
    denominator = np.minimum((a >= 0).sum(1), (b >= 0).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, shared / denominator, np.nan)


class TokenLookup:
    """The token id at (document, position) of an example key."""

    def __init__(self, documents: list[list[int]]) -> None:
        lengths = np.array([len(ids) for ids in documents], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        self.tokens = np.fromiter((t for ids in documents for t in ids), dtype=np.int64, count=int(lengths.sum()))

    def __call__(self, keys: np.ndarray) -> np.ndarray:
        empty = keys == KEY_EMPTY
        safe = np.where(empty, 0, keys)
        flat = self.offsets[safe >> POSITION_BITS] + (safe & ((1 << POSITION_BITS) - 1))
        return np.where(empty, -1, self.tokens[flat])


def _mean_of_two(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean of the two cross-half directions; the one present when the other is NaN."""
    both = np.stack([a, b])
    present = ~np.isnan(both)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(present.any(0), np.where(present, both, 0.0).sum(0) / present.sum(0), np.nan)


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _half_profiles(stats: LayerStats, counts: np.ndarray, usable: np.ndarray) -> list[np.ndarray]:
    """Mean activation per usable profile token, per half: [N, P'] each."""
    return [(_np(stats.profile[half])[usable] / counts[half][usable, None]).T for half in (0, 1)]


def layer_agreement(state: IndexState, variant: str, layer: int, lookup: TokenLookup, dense_name: str) -> dict:
    """The agreement columns (see the module docstring) of one variant and layer: name -> [N]."""
    dense, changed = state.layers[dense_name][layer], state.layers[variant][layer]
    count = state.tokens
    pearson = pearson_from_sums(count, _np(dense.sum), _np(changed.sum), _np(dense.sum_sq), _np(changed.sum_sq),
                                _np(state.cross[variant][layer]))
    with np.errstate(invalid="ignore", divide="ignore"):
        mass_ratio = np.where(_np(dense.sum_abs) > 0, _np(changed.sum_abs) / _np(dense.sum_abs), np.nan)
    overlaps = {side: key_overlap(_np(overall_top(dense, side).keys), _np(overall_top(changed, side).keys))
                for side in ("positive", "negative")}
    counts = _np(state.profile_counts).astype(np.float64)
    usable = (counts[0] > 0) & (counts[1] > 0)
    dense_a, dense_b = _half_profiles(dense, counts, usable)
    variant_a, variant_b = _half_profiles(changed, counts, usable)
    floor_corr = rowwise_pearson(dense_a, dense_b)
    change_corr = _mean_of_two(rowwise_pearson(dense_a, variant_b), rowwise_pearson(variant_a, dense_b))
    tokens = {(name, half): lookup(_np(stats.top[(half, "positive")].keys))
              for name, stats in (("dense", dense), ("variant", changed)) for half in (0, 1)}
    floor_overlap = multiset_overlap(tokens["dense", 0], tokens["dense", 1])
    change_overlap = _mean_of_two(multiset_overlap(tokens["dense", 0], tokens["variant", 1]),
                                  multiset_overlap(tokens["variant", 0], tokens["dense", 1]))
    below = (change_corr < floor_corr) | (change_overlap < floor_overlap)  # NaN compares False: not below
    return {
        "pearson": pearson, "mass_ratio": mass_ratio, "mass_lost": 1.0 - mass_ratio,
        "topk_overlap": overlaps["positive"], "topk_overlap_negative": overlaps["negative"],
        "profile_correlation": change_corr, "profile_correlation_floor": floor_corr,
        "token_overlap": change_overlap, "token_overlap_floor": floor_overlap,
        "not_distinguishable": ~below,
    }
