"""What an accuracy would be by chance: 95% intervals from lm-eval's stderr, and paired tests of a
variant against the dense model on the same examples (McNemar, paired bootstrap, sign flips).

Every test is scipy's (``binomtest``, ``bootstrap``, ``permutation_test``), seeded, so the same
inputs give the same numbers. The formulas are in docs/evaluation.md ("Uncertainty").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard

import numpy as np
from scipy import stats

from backend.errors import UserError

CONFIDENCE = 0.95
Z95 = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))  # 1.959963...
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
NOT_DISTINGUISHABLE = "not distinguishable"


def normal_interval(value: float, stderr: float) -> tuple[float, float]:
    """value ± z·stderr: lm-eval's stderr of a mean accuracy is the sample standard deviation of the
    per-example 0/1 scores over √n, i.e. √(p(1−p)/(n−1)) - the binomial normal approximation."""
    return value - Z95 * stderr, value + Z95 * stderr


def metric_intervals(metrics: Mapping[str, object]) -> dict[str, list[float]]:
    """``{"acc,none": [low, high], ...}`` for every metric of an lm-eval result dict that has a stderr."""
    intervals = {}
    for name, value in metrics.items():
        metric, _, filter_name = name.partition(",")
        stderr = metrics.get(f"{metric}_stderr,{filter_name}")
        if (filter_name and not metric.endswith("_stderr") and _finite(value) and _finite(stderr)):
            intervals[name] = list(normal_interval(float(value), float(stderr)))
    return intervals


def _finite(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class PairedDifference:
    """other − reference on the examples both were scored on, with a 95% interval and a p-value."""

    n_examples: int
    difference: float
    low: float
    high: float
    p_value: float
    test: str  # "mcnemar (exact)" or "sign-flip permutation"
    worse: int | None = None  # McNemar's discordant pairs: right in the reference, wrong in the other
    better: int | None = None  # wrong in the reference, right in the other

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0: a difference, not chance."""
        return not (self.low <= 0.0 <= self.high)

    @property
    def verdict(self) -> str:
        if not self.distinguishable:
            return NOT_DISTINGUISHABLE
        return "lower" if self.difference < 0 else "higher"

    def to_json(self) -> dict:
        return {"n_examples": self.n_examples, "difference": self.difference, "low": self.low,
                "high": self.high, "p_value": self.p_value, "test": self.test, "worse": self.worse,
                "better": self.better, "distinguishable": self.distinguishable, "verdict": self.verdict}

    def describe(self, scale: float = 1.0) -> str:
        """``-3.10 [-6.20, 0.10] p=0.081 not distinguishable`` (``scale`` 100 for points)."""
        return (f"{self.difference * scale:+.2f} [{self.low * scale:+.2f}, {self.high * scale:+.2f}] "
                f"p={self.p_value:.3g} {self.verdict}")


def mcnemar_p_value(worse: int, better: int) -> float:
    """Exact McNemar test: under no difference each discordant pair is worse or better with
    probability 1/2, so ``worse`` ~ Binomial(worse + better, 1/2)."""
    if worse + better == 0:
        return 1.0
    return float(stats.binomtest(worse, worse + better, 0.5).pvalue)


def paired_difference(strata: Sequence[tuple[np.ndarray, np.ndarray]], weights: Sequence[float] | None = None, *,
                      seed: int = DEFAULT_SEED, resamples: int = DEFAULT_RESAMPLES) -> PairedDifference:
    """Σ_s w_s · mean(other_s − reference_s) over strata of paired per-example scores.

    Each stratum is ``(reference [examples], other [examples])`` on the same examples in the same
    order (one task of one model; ``other`` may be the per-example mean of several variants).
    Interval: scipy's percentile bootstrap resampling examples within each stratum independently.
    p-value: exact McNemar when there is one stratum of 0/1 scores; otherwise a sign-flip
    permutation test of the per-example weighted differences (null: symmetric about 0).
    """
    if not strata or any(len(reference) == 0 for reference, _ in strata):
        raise UserError("a paired difference needs examples scored by both models")
    stratum_weights = (np.full(len(strata), 1.0 / len(strata)) if weights is None
                       else np.asarray(weights, dtype=float))  # [strata]
    differences = [np.asarray(other, dtype=float) - np.asarray(reference, dtype=float) for reference, other in strata]
    estimate = float(sum(w * d.mean() for w, d in zip(stratum_weights, differences, strict=True)))

    def statistic(*samples, axis=-1):
        return sum(w * np.mean(sample, axis=axis) for w, sample in zip(stratum_weights, samples, strict=True))

    if all(np.all(d == d[0]) for d in differences):  # no spread: every resample gives the estimate
        low = high = estimate
    else:
        result = stats.bootstrap(tuple(differences), statistic, n_resamples=resamples, vectorized=True,
                                 confidence_level=CONFIDENCE, method="percentile",
                                 rng=np.random.default_rng(seed))
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)

    n_examples = sum(len(d) for d in differences)
    reference, other = strata[0]
    if len(strata) == 1 and _binary(reference) and _binary(other):
        reference, other = np.asarray(reference, dtype=bool), np.asarray(other, dtype=bool)
        worse, better = int(np.sum(reference & ~other)), int(np.sum(~reference & other))
        return PairedDifference(n_examples, estimate, low, high, mcnemar_p_value(worse, better),
                                "mcnemar (exact)", worse, better)
    # Each example's share of the estimate, so that the mean of `shares` is the estimate.
    shares = np.concatenate([w * d * n_examples / len(d)
                             for w, d in zip(stratum_weights, differences, strict=True)])
    if not np.any(shares):
        p_value = 1.0
    else:
        p_value = float(stats.permutation_test((shares,), np.mean, permutation_type="samples",
                                               n_resamples=resamples, vectorized=True,
                                               rng=np.random.default_rng(seed)).pvalue)
    return PairedDifference(n_examples, estimate, low, high, p_value, "sign-flip permutation")


def _binary(values) -> bool:
    array = np.asarray(values, dtype=float)
    return bool(np.all((array == 0.0) | (array == 1.0)))


def paired_vectors(reference: Mapping[int, float], other: Mapping[int, float]) -> tuple[np.ndarray, np.ndarray]:
    """Per-example scores ``{doc id: score}`` of two evaluations, on the doc ids both have, in id
    order: ``(reference [examples], other [examples])``."""
    shared = sorted(set(reference) & set(other))
    return (np.array([reference[doc] for doc in shared], dtype=float),
            np.array([other[doc] for doc in shared], dtype=float))
