"""Accuracy with uncertainty: intervals from lm-eval's stderr, exact McNemar, the paired bootstrap,
paired differences in the tables and the API, where the truth is known by hand or by scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.errors import UserError
from backend.evaluation.paired import difference_to_dense
from backend.evaluation.runner import evaluate
from backend.evaluation.store import DENSE, ResultKey, ResultsStore
from backend.evaluation.tables import build_table
from backend.evaluation.uncertainty import (
    DEFAULT_RESAMPLES,
    NOT_DISTINGUISHABLE,
    Z95,
    mcnemar_p_value,
    metric_intervals,
    paired_difference,
)
from tests.conftest import tiny_loaded


def test_interval_of_a_stored_result_is_the_binomial_normal_approximation(isolated_cache):
    store = ResultsStore.from_settings()
    [result] = evaluate(tiny_loaded("llama", seed=5), "sst2", limit=15, store=store)
    accuracy, n = result.stored.metric(), result.stored.n_examples
    half_width = 1.959963984540054 * math.sqrt(accuracy * (1 - accuracy) / (n - 1))
    low, high = result.stored.to_json()["intervals"]["acc,none"]
    assert (low, high) == pytest.approx((accuracy - half_width, accuracy + half_width), rel=1e-9)
    correct = store.outcomes(result.stored.key)["acc"]
    assert len(correct) == n and sum(correct.values()) / n == accuracy  # exactly lm-eval's mean
    assert metric_intervals({"acc,none": 0.5, "f1,none": 0.4, "alias": "x"}) == {}  # no stderr, no interval


def test_mcnemar_p_value_is_the_exact_binomial_on_the_discordant_pairs():
    # 7 examples right for dense only, 2 right for the variant only, 30 + 11 concordant.
    reference = np.array([1] * 7 + [0] * 2 + [1] * 30 + [0] * 11)
    other = np.array([0] * 7 + [1] * 2 + [1] * 30 + [0] * 11)
    found = paired_difference([(reference, other)])
    hand = 2 * sum(math.comb(9, k) for k in range(3)) / 2**9  # two-sided, 92/512
    assert found.test == "mcnemar (exact)" and (found.worse, found.better) == (7, 2)
    assert found.p_value == pytest.approx(hand, abs=1e-12) == stats.binomtest(7, 9, 0.5).pvalue
    assert found.difference == pytest.approx(-5 / 50)
    assert mcnemar_p_value(0, 0) == 1.0


def test_paired_bootstrap_interval_is_scipys_on_the_differences():
    rng = np.random.default_rng(11)
    reference = rng.integers(0, 2, 80)
    other = np.where(rng.random(80) < 0.15, 1 - reference, reference)  # 15% of examples flip
    found = paired_difference([(reference, other)], seed=3)
    direct = stats.bootstrap(((other - reference).astype(float),), np.mean, n_resamples=DEFAULT_RESAMPLES,
                             method="percentile", rng=np.random.default_rng(3))
    assert (found.low, found.high) == pytest.approx(
        (direct.confidence_interval.low, direct.confidence_interval.high), abs=1e-12)
    assert paired_difference([(reference, other)], seed=3) == found  # seeded: same numbers
    same = paired_difference([(reference, reference)])
    assert (same.low, same.high, same.p_value, same.verdict) == (0.0, 0.0, 1.0, NOT_DISTINGUISHABLE)
    with pytest.raises(UserError, match="examples"):
        paired_difference([(np.array([]), np.array([]))])


def test_paired_bootstrap_covers_the_true_difference_in_most_simulations():
    rng = np.random.default_rng(0)
    covered = 0
    for simulation in range(200):  # dense right with p=0.7; the variant flips 20% of examples
        reference = (rng.random(150) < 0.7).astype(float)
        flips = rng.random(150) < 0.2
        other = np.where(flips, 1 - reference, reference)
        true_difference = 0.2 * (0.3 - 0.7)  # E[other - reference]
        found = paired_difference([(reference, other)], seed=simulation, resamples=999)
        covered += found.low <= true_difference <= found.high
    assert covered >= 0.9 * 200


def test_several_variants_and_tasks_use_the_weighted_sign_flip_test():
    reference = np.array([1.0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    mean_of_two = np.array([0.5, 0, 1, 0.5, 0, 0, 0.5, 0, 0, 1])
    found = paired_difference([(reference, mean_of_two), (reference[:4], reference[:4])], [2 / 3, 1 / 3])
    assert found.test == "sign-flip permutation" and found.worse is None
    assert found.difference == pytest.approx(2 / 3 * np.mean(mean_of_two - reference))
    shares = np.concatenate([2 / 3 * (mean_of_two - reference) * 14 / 10, np.zeros(4)])
    direct = stats.permutation_test((shares,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=DEFAULT_RESAMPLES, rng=np.random.default_rng(0))
    assert found.p_value == pytest.approx(direct.pvalue)


def _put(store, variant, accuracy_vector, task="sst2", model="m"):
    scores = {doc: float(value) for doc, value in zip(range(0, 2 * len(accuracy_vector), 2), accuracy_vector)}
    accuracy = float(np.mean(accuracy_vector))
    stderr = float(np.std(accuracy_vector, ddof=1) / math.sqrt(len(accuracy_vector)))
    return store.put(ResultKey(model, variant, task, len(scores), "packaged", "test", 7),
                     n_examples=len(scores), metrics={"acc,none": accuracy, "acc_stderr,none": stderr},
                     outcomes={"acc": scores})


@pytest.fixture
def paired_store(isolated_cache) -> ResultsStore:
    """Dense right on 40 of 60 examples; variant 'close' differs on 3 + 2 of them (not
    distinguishable), variant 'far' loses 15 and gains none."""
    store = ResultsStore.from_settings()
    for variant_id, calibration in (("close", "c4"), ("far", "sst2")):
        store.record_variant({"id": variant_id, "base_model": "m", "method": "wanda", "calibration": calibration,
                              "sparsity": "0.5", "seqlen": 64, "nsamples": 4, "seed": 0})
    dense = np.array([1] * 40 + [0] * 20)
    _put(store, DENSE, dense)
    _put(store, "close", np.array([0] * 3 + [1] * 37 + [1] * 2 + [0] * 18))
    _put(store, "far", np.array([0] * 15 + [1] * 25 + [0] * 20))
    return store


def test_table_cells_carry_the_paired_difference_to_dense(paired_store):
    table = build_table("task-calibration", paired_store.results(), model="m", outcomes=paired_store.outcomes)
    assert table.columns == ["dense", "c4", "sst2"]
    dense_cell, close, far = table.differences[0]
    assert dense_cell is None  # the reference itself
    assert (close.worse, close.better, close.verdict) == (3, 2, NOT_DISTINGUISHABLE)
    assert close.p_value == pytest.approx(stats.binomtest(3, 5, 0.5).pvalue)
    assert (far.worse, far.better, far.verdict) == (15, 0, "lower") and far.high < 0
    assert far.difference == pytest.approx(-15 / 60)
    low, high = table.intervals[0][2]
    assert (low + high) / 2 == pytest.approx(25 / 60)
    markdown = table.to_markdown()
    assert "not distinguishable" in markdown and "p=" in markdown
    assert table.to_json()["rows"][0]["differences"][1]["verdict"] == NOT_DISTINGUISHABLE
    # Without per-example scores (or without their dense counterpart) there is no pairing.
    assert build_table("task-calibration", paired_store.results(), model="m").differences[0] == [None] * 3
    lone = _put(paired_store, "close", np.array([1, 0, 1]), task="rte")
    assert difference_to_dense([lone], paired_store.outcomes) is None


def test_compare_endpoint_and_table_payload(paired_store, isolated_cache):
    app = create_app(ApiSettings(**isolated_cache.model_dump()), loaded=tiny_loaded("llama"))
    with TestClient(app, raise_server_exceptions=False) as client:
        [row] = client.get("/evaluations/compare", params={"base_model": "m", "variant": "close"}).json()
        assert row["task"] == "sst2" and row["dense"] == pytest.approx(40 / 60)
        assert row["difference"]["verdict"] == NOT_DISTINGUISHABLE and row["difference"]["worse"] == 3
        assert row["variant_interval"][0] < row["variant"] < row["variant_interval"][1]
        table = client.get("/tables/task-calibration", params={"model": "m"}).json()
        assert table["rows"][0]["differences"][2]["verdict"] == "lower"
        assert table["rows"][0]["intervals"][0] == pytest.approx(
            [40 / 60 - Z95 * np.std([1] * 40 + [0] * 20, ddof=1) / math.sqrt(60),
             40 / 60 + Z95 * np.std([1] * 40 + [0] * 20, ddof=1) / math.sqrt(60)])
        missing = client.get("/evaluations/compare", params={"base_model": "m"})
        assert missing.status_code == 422
        evaluations = client.get("/evaluations", params={"base_model": "m"}).json()
        assert all(row["sample_seed"] == 7 and "acc,none" in row["intervals"] for row in evaluations)
