"""The tests behind the claims, on per-example outcomes: scipy permutation tests and bootstraps,
statsmodels power and Holm corrections, all seeded.

An evaluation stores each example's score (0/1) for the dense model and every variant, on the
same seeded examples, so an outcome table is a matrix ``[conditions, examples]`` (conditions:
calibration sets, sparsities or sequence lengths of one task). Under "the condition changes
nothing", the outcomes of one example are exchangeable across conditions; permuting them within
each example (``permutation_test(permutation_type="samples")``) gives the spread that sampling
alone produces at our n, which is the null every test here is measured against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Outcomes:
    """One task's per-example scores under several conditions (same examples in every row)."""

    task: str
    category: str
    conditions: tuple[str, ...]
    scores: np.ndarray  # [conditions, examples] 0/1
    docs: tuple[int, ...] = ()  # the examples' doc ids, in column order (empty: not known)

    @property
    def n(self) -> int:
        return int(self.scores.shape[1])


def _segments(tables: Sequence[Outcomes]) -> tuple[np.ndarray, np.ndarray]:
    """Tasks' tables side by side: ``[conditions, examples of all tasks]`` and each column's task."""
    scores = np.concatenate([table.scores for table in tables], axis=1)
    owner = np.concatenate([np.full(table.n, index) for index, table in enumerate(tables)])
    return scores, owner


def _one_hot(owner: np.ndarray, tasks: int) -> np.ndarray:
    """``owner [..., examples]`` (task index of each example) -> ``[..., examples, tasks]``."""
    return (owner[..., :, None] == np.arange(tasks)).astype(float)


def _task_means(scores: np.ndarray, owner: np.ndarray, tasks: int) -> np.ndarray:
    """``scores [..., conditions, examples]`` -> per-task accuracies ``[..., conditions, tasks]``."""
    one_hot = _one_hot(owner, tasks)
    return (scores @ one_hot) / one_hot.sum(axis=-2)[..., None, :]


def spread_variance(scores: np.ndarray, owner: np.ndarray, tasks: int) -> np.ndarray:
    """Mean over tasks of the variance (ddof 1) of accuracy across conditions; ``[...]``."""
    return _task_means(scores, owner, tasks).var(axis=-2, ddof=1).mean(axis=-1)


def null_variance(scores: np.ndarray, owner: np.ndarray, tasks: int) -> np.ndarray:
    """The expected ``spread_variance`` when outcomes are exchangeable within each example; ``[...]``.

    An example right under m of k conditions adds q(1-q)/n^2 (q = m/k) to the variance of each
    condition's accuracy; the sample variance of k such accuracies expects k/(k-1) times that.
    """
    k = scores.shape[-2]
    q = scores.mean(axis=-2)  # [..., examples]
    one_hot = _one_hot(owner, tasks)
    per_task = ((q * (1 - q))[..., None, :] @ one_hot)[..., 0, :] / one_hot.sum(axis=-2) ** 2  # [..., tasks]
    return k / (k - 1) * per_task.mean(axis=-1)


def excess_spread(scores: np.ndarray, owner: np.ndarray, tasks: int) -> np.ndarray:
    """The spread of accuracy across conditions beyond sampling, as a standard deviation (0..1)."""
    excess = spread_variance(scores, owner, tasks) - null_variance(scores, owner, tasks)
    return np.sqrt(np.maximum(excess, 0.0))


def _resampled(scores: np.ndarray, owner: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Example indices ``chosen [..., examples]`` -> ``scores [..., conditions, examples]``, owners."""
    return np.moveaxis(scores[:, chosen], 0, -2), owner[chosen]


def spread_test(tables: Sequence[Outcomes], resamples: int, seed: int) -> dict:
    """Does accuracy vary across conditions more than sampling alone gives? One test over the
    tasks given (their variances averaged), permuting conditions within each example."""
    scores, owner = _segments(tables)
    count = len(tables)

    def statistic(*rows, axis=-1):
        stacked = np.stack([np.moveaxis(row, axis, -1) for row in rows], axis=-2)  # [..., k, examples]
        return spread_variance(stacked, owner, count)

    result = stats.permutation_test(tuple(scores), statistic, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, alternative="greater", rng=seed)
    return {"p_value": float(result.pvalue), "spread": float(excess_spread(scores, owner, count)),
            "raw_spread": math.sqrt(float(spread_variance(scores, owner, count))),
            "null_spread": math.sqrt(float(null_variance(scores, owner, count))), "n": int(scores.shape[1])}


def spread_interval(tables: Sequence[Outcomes], resamples: int, seed: int, confidence: float = 0.95) -> dict:
    """Percentile bootstrap (examples resampled) of the excess spread; percentile because the
    figure sits on its boundary (0) whenever calibration changes nothing."""
    scores, owner = _segments(tables)

    def statistic(chosen, axis=-1):  # resampled example indices [..., examples]
        return excess_spread(*_resampled(scores, owner, chosen), len(tables))

    result = stats.bootstrap((np.arange(scores.shape[1]),), statistic, vectorized=True, n_resamples=resamples,
                             method="percentile", confidence_level=confidence, rng=seed)
    return {"low": float(result.confidence_interval.low), "high": float(result.confidence_interval.high)}


def spread_difference(first: Sequence[Outcomes], second: Sequence[Outcomes], resamples: int, seed: int,
                      confidence: float = 0.95) -> dict:
    """Excess spread of ``first`` minus that of ``second`` (e.g. sentiment - reasoning), with a
    percentile bootstrap interval resampling each group's examples independently."""
    groups = [_segments(tables) for tables in (first, second)]
    sizes = (len(first), len(second))

    def statistic(chosen_a, chosen_b, axis=-1):  # resampled example indices of each group [..., examples]
        (scores_a, owner_a), (scores_b, owner_b) = groups
        return (excess_spread(*_resampled(scores_a, owner_a, chosen_a), sizes[0])
                - excess_spread(*_resampled(scores_b, owner_b, chosen_b), sizes[1]))

    everything = tuple(np.arange(scores.shape[1]) for scores, _ in groups)
    result = stats.bootstrap(everything, statistic, vectorized=True, paired=False, n_resamples=resamples,
                             method="percentile", confidence_level=confidence, rng=seed)
    return {"difference": float(statistic(*everything)), "low": float(result.confidence_interval.low),
            "high": float(result.confidence_interval.high)}


def trend_test(table: Outcomes, levels: Sequence[float], resamples: int, seed: int) -> dict:
    """Least-squares slope of accuracy over ``levels`` (e.g. sparsity), tested two-sided by
    permuting the levels within each example."""
    x = np.asarray(levels, dtype=float)
    centred = (x - x.mean()) / ((x - x.mean()) ** 2).sum()

    def statistic(*rows, axis=-1):
        means = np.stack([np.mean(row, axis=axis) for row in rows], axis=-1)  # [..., levels]
        return means @ centred

    result = stats.permutation_test(tuple(table.scores), statistic, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, alternative="two-sided", rng=seed)
    return {"slope": float(statistic(*table.scores)), "p_value": float(result.pvalue),
            "accuracies": [float(value) for value in table.scores.mean(axis=1)]}


def trend_interval(table: Outcomes, levels: Sequence[float], resamples: int, seed: int,
                   confidence: float = 0.95) -> dict:
    """Percentile bootstrap interval of ``trend_test``'s slope: examples resampled with all their
    conditions (each example keeps its outcomes at every level, as the slope pairs them)."""
    x = np.asarray(levels, dtype=float)
    centred = (x - x.mean()) / ((x - x.mean()) ** 2).sum()  # [levels]
    scores = np.asarray(table.scores, dtype=float)  # [levels, examples]

    def statistic(chosen, axis=-1):  # resampled example indices [..., examples]
        return np.moveaxis(scores[:, chosen], 0, -2).mean(axis=-1) @ centred  # [...]

    if np.all(scores == scores[:, :1]):  # every example scores the same: no spread to resample
        value = float(statistic(np.arange(table.n)))
        return {"low": value, "high": value}
    result = stats.bootstrap((np.arange(table.n),), statistic, vectorized=True, n_resamples=resamples,
                             method="percentile", confidence_level=confidence, rng=seed)
    return {"low": float(result.confidence_interval.low), "high": float(result.confidence_interval.high)}


def paired_difference(first: np.ndarray, second: np.ndarray, resamples: int, seed: int,
                      confidence: float = 0.95) -> dict:
    """Mean of ``first - second`` (per-example scores of two conditions on the same examples):
    sign-flip permutation p-value (two-sided) and a BCa bootstrap interval."""
    first, second = np.asarray(first, float), np.asarray(second, float)

    def statistic(a, b, axis=-1):
        return np.mean(a, axis=axis) - np.mean(b, axis=axis)

    tested = stats.permutation_test((first, second), statistic, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, alternative="two-sided", rng=seed)
    differences = first - second
    if np.all(differences == differences[0]):  # no spread: the interval is the value itself
        low = high = float(differences[0])
    else:
        interval = stats.bootstrap((differences,), np.mean, n_resamples=resamples, confidence_level=confidence,
                                   rng=seed).confidence_interval
        low, high = float(interval.low), float(interval.high)
    return {"difference": float(differences.mean()), "low": low, "high": high, "p_value": float(tested.pvalue),
            "n": int(first.size)}


def independent_difference(first: Sequence[float], second: Sequence[float], resamples: int, seed: int,
                           confidence: float = 0.95) -> dict:
    """Mean of ``first`` minus mean of ``second`` (independent samples, e.g. texts of two task
    categories): permutation p-value (two-sided) and a percentile bootstrap interval."""
    a, b = np.asarray(first, float), np.asarray(second, float)

    def statistic(x, y, axis=-1):
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    tested = stats.permutation_test((a, b), statistic, permutation_type="independent", vectorized=True,
                                    n_resamples=resamples, alternative="two-sided", rng=seed)
    interval = stats.bootstrap((a, b), statistic, paired=False, n_resamples=resamples, method="percentile",
                               confidence_level=confidence, rng=seed).confidence_interval
    return {"difference": float(statistic(a, b)), "low": float(interval.low), "high": float(interval.high),
            "p_value": float(tested.pvalue), "n": [int(a.size), int(b.size)]}


def holm(p_values: Sequence[float], alpha: float) -> list[float]:
    """Holm-adjusted p-values (statsmodels ``multipletests``)."""
    if not p_values:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(list(p_values), alpha=alpha, method="holm")[1]]


def detectable_accuracy_change(n: int, accuracy: float, alpha: float, power: float) -> float:
    """The smallest change of an accuracy near ``accuracy`` that two conditions measured on ``n``
    examples each detect with ``power`` (two-sided, ``alpha``): statsmodels' power for Cohen's h,
    turned back into accuracy points. Independent-sample power: conservative for paired examples."""
    from statsmodels.stats.power import NormalIndPower

    h = NormalIndPower().solve_power(effect_size=None, nobs1=n, alpha=alpha, power=power, ratio=1.0)
    base = min(max(accuracy, 0.01), 0.99)
    angle = math.asin(math.sqrt(base))
    down = math.sin(max(angle - float(h) / 2, 0.0)) ** 2
    up = math.sin(min(angle + float(h) / 2, math.pi / 2)) ** 2
    return float(max(base - down, up - base))


def detectable_mean(values: Sequence[float], alpha: float, power: float) -> float | None:
    """Smallest mean a one-sample t-test on these values' n and spread detects (statsmodels)."""
    from statsmodels.stats.power import TTestPower

    data = np.asarray(values, float)
    if data.size < 3 or float(data.std(ddof=1)) == 0.0:
        return None
    d = TTestPower().solve_power(effect_size=None, nobs=data.size, alpha=alpha, power=power)
    return float(d) * float(data.std(ddof=1))


def detectable_difference(first: Sequence[float], second: Sequence[float], alpha: float,
                          power: float) -> float | None:
    """Smallest difference of means two independent groups of these sizes and pooled spread
    detect (statsmodels ``TTestIndPower``)."""
    from statsmodels.stats.power import TTestIndPower

    a, b = np.asarray(first, float), np.asarray(second, float)
    if a.size < 2 or b.size < 2:
        return None
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2))
    if pooled == 0.0:
        return None
    d = TTestIndPower().solve_power(effect_size=None, nobs1=a.size, alpha=alpha, power=power,
                                    ratio=b.size / a.size)
    return float(d) * pooled
