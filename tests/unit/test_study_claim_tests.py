"""The claims' tests on planted truth: a real effect is found, pure sampling noise is not."""

from __future__ import annotations

import numpy as np
import pytest

from backend.studies import claim_tests
from backend.studies.claim_tests import Outcomes
from backend.studies.claims import NOT_DISTINGUISHABLE, REPLICATED, judge_c1, judge_c3
from backend.studies.spec import Claim, Settings


def _table(task: str, category: str, accuracies, n: int, rng) -> Outcomes:
    """Per-example outcomes: each example has its own difficulty, shared by all conditions, so the
    conditions are paired the way one model's variants on the same examples are."""
    difficulty = rng.normal(0.0, 1.0, n)
    rows = []
    for accuracy in accuracies:
        shift = np.log(accuracy / (1 - accuracy))
        rows.append((rng.random(n) < 1 / (1 + np.exp(-(shift + difficulty)))).astype(float))
    return Outcomes(task, category, tuple(f"cal{i}" for i in range(len(accuracies))), np.array(rows))


class _Evidence:
    """A claim's evidence given as tables (the store-backed reader is tested in test_study_run)."""

    def __init__(self, calibration=(), sparsity=()):
        self._tables = {"calibration": list(calibration), "sparsity": list(sparsity)}

    def tables(self, axis, dense_as=None):
        return self._tables[axis]

    def failures(self):
        return []


def test_null_variance_is_the_permutation_mean():
    rng = np.random.default_rng(3)
    table = _table("t", "sentiment", [0.6, 0.6, 0.6, 0.6], 120, rng)
    scores, owner = claim_tests._segments([table])
    expected = claim_tests.null_variance(scores, owner, 1)
    permuted = []
    for _ in range(4000):
        shuffled = np.array([rng.permutation(column) for column in scores.T]).T
        permuted.append(claim_tests.spread_variance(shuffled, owner, 1))
    assert np.mean(permuted) == pytest.approx(expected, rel=0.03)


def test_c1_planted_calibration_effect_in_sentiment_is_replicated():
    rng = np.random.default_rng(0)
    settings = Settings(resamples=2000, seed=0)
    sentiment = [_table(f"sent{i}", "sentiment", [0.45, 0.6, 0.78], 200, rng) for i in range(2)]
    reasoning = [_table(f"reas{i}", "reasoning", [0.6, 0.6, 0.6], 200, rng) for i in range(2)]
    judgement = judge_c1(_Evidence(calibration=sentiment + reasoning), Claim(), settings)
    assert judgement["verdict"] == REPLICATED
    category = {row["name"]: row for row in judgement["rows"] if row["level"] == "category"}
    assert category["sentiment"]["p_holm"] < 0.01
    assert category["reasoning"]["p_holm"] > 0.01
    # the planted spread: sd of (0.45, 0.6, 0.78) on the probability scale is ~0.165; the logit
    # shift with per-example difficulty flattens it a little.
    assert 0.08 < category["sentiment"]["spread"] < 0.2


def test_c1_pure_sampling_noise_is_not_distinguishable_in_95_percent_of_200_simulations():
    settings = Settings(resamples=200, seed=0)
    verdicts = []
    for simulation in range(200):
        rng = np.random.default_rng(1000 + simulation)
        tables = [_table(f"sent{i}", "sentiment", [0.6, 0.6, 0.6], 60, rng) for i in range(2)]
        tables += [_table(f"reas{i}", "reasoning", [0.55, 0.55, 0.55], 60, rng) for i in range(2)]
        settings = Settings(resamples=200, seed=simulation)
        verdicts.append(judge_c1(_Evidence(calibration=tables), Claim(), settings)["verdict"])
    share = verdicts.count(NOT_DISTINGUISHABLE) / len(verdicts)
    assert share >= 0.95, share


def test_c3_trend_finds_a_planted_fall_and_its_sign():
    rng = np.random.default_rng(5)
    falling = _table("sciq", "reasoning", [0.9, 0.8, 0.6, 0.35], 150, rng)
    falling = Outcomes("sciq", "reasoning", ("0", "0.5", "0.6", "0.8"), falling.scores)
    judgement = judge_c3(_Evidence(sparsity=[falling]), Claim(), Settings(resamples=1000))
    assert judgement["verdict"] == REPLICATED
    pooled = judgement["rows"][0]
    assert pooled["slope"] < 0 and pooled["p_value"] < 0.01
    # the slope is the least-squares slope of the four accuracies over the sparsity levels
    x = np.array([0, 0.5, 0.6, 0.8])
    assert pooled["slope"] == pytest.approx(np.polyfit(x, falling.scores.mean(axis=1), 1)[0])


def test_c3_slope_interval_covers_the_planted_slope_and_excludes_zero_only_when_there_is_one():
    rng = np.random.default_rng(7)
    levels = np.array([0.0, 0.5, 0.8])
    covered = 0
    for draw in range(40):  # coverage of the planted slope over independent tables
        planted = 0.9 - 0.5 * levels  # slope -0.5 exactly, no per-example difficulty
        scores = (rng.random((3, 300)) < planted[:, None]).astype(float)
        interval = claim_tests.trend_interval(Outcomes("t", "c", ("0", "0.5", "0.8"), scores), levels, 600, draw)
        assert interval["high"] < 0  # a fall of 0.5 per unit at n = 300 is never mistaken for none
        covered += interval["low"] <= -0.5 <= interval["high"]
    assert covered >= 34  # a 95 % interval; 34 of 40 leaves room for the binomial spread
    flat = (rng.random((3, 300)) < 0.6).astype(float)
    interval = claim_tests.trend_interval(Outcomes("t", "c", ("0", "0.5", "0.8"), flat), levels, 600, 0)
    assert interval["low"] < 0 < interval["high"]
    again = claim_tests.trend_interval(Outcomes("t", "c", ("0", "0.5", "0.8"), flat), levels, 600, 0)
    assert again == interval  # seeded


def test_c3_reports_the_slope_with_its_interval():
    rng = np.random.default_rng(5)
    falling = _table("sciq", "reasoning", [0.9, 0.8, 0.6, 0.35], 150, rng)
    falling = Outcomes("sciq", "reasoning", ("0", "0.5", "0.6", "0.8"), falling.scores)
    judgement = judge_c3(_Evidence(sparsity=[falling]), Claim(), Settings(resamples=1000))
    pooled = judgement["rows"][0]
    assert pooled["low"] < pooled["slope"] < pooled["high"] < 0
    assert (judgement["estimate"]["low"], judgement["estimate"]["high"]) == (pooled["low"], pooled["high"])


def test_paired_difference_of_identical_conditions_is_zero_and_not_significant():
    scores = np.random.default_rng(2).integers(0, 2, 80).astype(float)
    result = claim_tests.paired_difference(scores, scores, 500, 0)
    assert result["difference"] == 0.0 and result["low"] == 0.0 and result["high"] == 0.0
    assert result["p_value"] == 1.0


def test_detectable_change_shrinks_with_n():
    small = claim_tests.detectable_accuracy_change(50, 0.6, 0.05, 0.8)
    large = claim_tests.detectable_accuracy_change(800, 0.6, 0.05, 0.8)
    assert large < small
    # Cohen's h for n=800 per group at 80% power: 2.8016 * sqrt(2/800) = 0.1401 -> ~6.9 points at 0.6
    assert large == pytest.approx(0.069, abs=0.004)
