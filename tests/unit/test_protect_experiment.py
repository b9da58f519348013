"""The protection experiment's pieces: its table from stored per-example scores (accuracy, interval,
paired difference checked by hand), the matched-random draw, the selection texts kept apart from the
evaluation examples, bad input, and the dashboard's view of it."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from backend.cli import main
from backend.errors import UserError
from backend.evaluation.store import ResultKey, ResultsStore
from backend.evaluation.uncertainty import Z95
from backend.guided.protect_experiment import (
    ProtectExperimentSpec,
    format_table,
    markdown_table,
    table_rows,
)
from backend.guided.protection_sources import evaluation_texts, matched_random, selection_examples
from backend.pruning.protection import Protection
from frontend.views.protect_view import experiment_frame, protection_fields

N = 40
# Per-example 0/1 scores on the same 40 examples, one arm each (seeded draws).
_rng = np.random.default_rng(7)
SCORES = {arm: (_rng.random(N) < p).astype(float)
          for arm, p in (("dense", 0.7), ("unprotected", 0.5), ("nsa", 0.55), ("random", 0.45))}


def _key(arm: str) -> ResultKey:
    return ResultKey("tiny", "" if arm == "dense" else f"v-{arm}", "sst2", N, "packaged", "test", 1)


@pytest.fixture
def stored(isolated_cache):
    store = ResultsStore.from_settings()
    arms = {}
    for arm, scores in SCORES.items():
        accuracy = float(scores.mean())
        store.put(_key(arm), n_examples=N, outcomes={"acc": dict(enumerate(scores.tolist()))},
                  metrics={"acc,none": accuracy, "acc_stderr,none": float(scores.std(ddof=1) / np.sqrt(N))})
        key = _key(arm)
        arms["dense" if arm == "dense" else f"0.5/{arm}"] = {
            "sparsity": None if arm == "dense" else "0.5", "arm": arm, "variant_id": key.variant_id or None,
            "results": {"sst2": {"base_model": key.base_model, "variant_id": key.variant_id, "task": "sst2",
                                 "limit": N, "data_source": "packaged", "harness_version": "test",
                                 "sample_seed": 1, "code_version": key.code_version}}}
    document = {"id": "protect-sst2-000000000000", "status": "done", "arms": arms,
                "spec": {"model": "tiny", "task": "sst2", "controls": [], "sparsities": ["0.5"], "ratio": 0.01,
                         "method": "wanda", "mode": "keep", "limit": N, "sample_seed": 1},
                "selection": {"texts": 32, "overlap_with_evaluation": 0}, "protection": {"nsa": {"count": 5}}}
    return store, document


def test_table_rows_match_a_hand_computation(stored):
    store, document = stored
    rows = {row["arm"]: row for row in table_rows(document, store)}
    assert list(rows) == ["dense", "unprotected", "nsa", "random"]
    for arm, row in rows.items():
        scores = SCORES[arm]
        assert row["accuracy"] == pytest.approx(scores.mean())
        half = Z95 * scores.std(ddof=1) / np.sqrt(N)
        assert row["low"] == pytest.approx(scores.mean() - half) and row["high"] == pytest.approx(scores.mean() + half)
    for arm in ("nsa", "random"):
        versus = rows[arm]["vs_unprotected"]
        reference, other = SCORES["unprotected"].astype(bool), SCORES[arm].astype(bool)
        assert versus["difference"] == pytest.approx(other.mean() - reference.mean())
        worse, better = int((reference & ~other).sum()), int((~reference & other).sum())
        assert (versus["worse"], versus["better"]) == (worse, better)
        assert versus["p_value"] == pytest.approx(stats.binomtest(worse, worse + better, 0.5).pvalue)
        assert versus["verdict"] == ("not distinguishable" if versus["low"] <= 0 <= versus["high"]
                                     else "lower" if versus["difference"] < 0 else "higher")
    assert rows["random"]["nsa_vs_random"]["difference"] == pytest.approx(
        SCORES["nsa"].mean() - SCORES["random"].mean())
    assert rows["dense"]["vs_unprotected"] is None and rows["unprotected"]["vs_unprotected"] is None


def test_the_dashboard_view_of_the_table(stored):
    store, document = stored
    document["rows"] = table_rows(document, store)
    frame = experiment_frame(document).set_index("arm")
    assert frame.loc["NSA-protected", "accuracy %"] == round(100 * SCORES["nsa"].mean(), 1)
    assert frame.loc["NSA-protected", "Δ vs unprotected (pts)"] == round(
        100 * (SCORES["nsa"].mean() - SCORES["unprotected"].mean()), 1)
    assert frame.loc["dense", "reading"] == "" and frame.loc["NSA-protected", "reading"] != ""
    assert "sst2 (protected)" in set(frame["task"])
    text = format_table(document)
    assert "NSA" not in text.splitlines()[1] and "nsa" in text and "p=" in text
    markdown = markdown_table(document).splitlines()
    assert len(markdown) == 2 + 4 and markdown[4].startswith("| 0.5 | sst2 | nsa |")


def test_protection_fields_of_the_prune_form():
    assert protection_fields("none") == {}
    assert protection_fields("NSA result", " abc:5 ") == {"protect": "abc:5", "protect_mode": "keep"}
    assert protection_fields("NSA on a task", task="rte", ratio=0.02, mode="upweight", factor=4) == {
        "protect_task": "rte", "protect_ratio": 0.02, "protect_mode": "upweight", "protect_factor": 4.0}


def test_matched_random_has_the_same_counts_per_layer():
    nsa = Protection.create({0: [1, 2, 3], 4: [10], 7: list(range(20))})
    drawn = matched_random(nsa, 64, seed=3)
    assert drawn.per_layer_counts() == nsa.per_layer_counts()
    assert all(0 <= index < 64 for indices in drawn.neurons.values() for index in indices)
    assert drawn.neurons == matched_random(nsa, 64, seed=3).neurons  # seeded
    assert drawn.neurons != matched_random(nsa, 64, seed=4).neurons


def test_selection_texts_stay_out_of_the_evaluation_sample():
    excluded = evaluation_texts("sst2", 200, 1234)
    assert len(excluded) == 200
    examples, overlap = selection_examples("sst2", 32, 0, excluded)
    assert overlap == 0 and len(examples) == 32
    assert not {example["text"] for example in examples} & excluded
    # More texts than the split has outside the sample: the overlap is counted, not hidden.
    _, forced = selection_examples("sst2", 700, 0, excluded)
    assert forced == 700 - (872 - 200)


@pytest.mark.parametrize("changes,needle", [
    ({"ratio": 0.7}, "(0, 0.5]"), ({"ratio": 0.0}, "(0, 0.5]"), ({"task": "arc_easy"}, "--protect-task"),
    ({"controls": ("no_such_task",)}, "no_such_task"), ({"method": "flap"}, "flap"),
    ({"sparsities": ()}, "at least one sparsity"), ({"mode": "hold"}, "mode"),
])
def test_experiment_spec_refuses_bad_input(changes, needle):
    with pytest.raises(UserError, match=None) as raised:
        ProtectExperimentSpec(model="tiny", **changes).check()
    assert needle in str(raised.value)


def test_experiment_cli_bad_input_is_one_line(isolated_cache, capsys):
    assert main(["experiment", "protect", "--ratio", "0.7"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(0, 0.5]" in err
    assert main(["experiment", "show", "protect-sst2-0123456789ab"]) == 2
    assert "unknown protection experiment" in capsys.readouterr().err
    assert main(["experiment", "list"]) == 0
    assert "no experiments yet" in capsys.readouterr().out


def test_protection_from_task_runs_nsa_on_texts_outside_the_evaluation_sample():
    from backend.guided.protection_sources import protection_from_task
    from tests.conftest import tiny_loaded

    loaded = tiny_loaded("llama")
    protection = protection_from_task(loaded, "sst2", 0.05, n_texts=3, seed=1, evaluation_limit=200)
    assert protection.count == round(0.05 * 2 * 64)  # the top 5 % of all neurons, overall
    source = protection.source
    assert source["kind"] == "nsa_task" and source["texts"] == 3 and source["overlap_with_evaluation"] == 0
    assert source["evaluation_examples_excluded"] == 200
    with pytest.raises(UserError, match=r"\(0, 0.5\]"):
        protection_from_task(loaded, "sst2", 0.6)


def test_a_stored_selection_is_reused_only_for_the_same_selection_inputs(isolated_cache):
    from backend.guided.protect_experiment import KIND, reusable_protection

    store = ResultsStore.from_settings()
    first = ProtectExperimentSpec(model="tiny", sparsities=("0.5",))
    protection = Protection.create({0: [3, 1], 5: [2]}, source={"kind": "nsa_task", "texts": 32})
    store.put_experiment(KIND, first.id, "done", {"id": first.id, "spec": first.to_json(),
                                                  "protection": {"nsa": protection.describe()}})
    other_sparsity = ProtectExperimentSpec(model="tiny", sparsities=("2:4",), controls=())
    reused = reusable_protection(other_sparsity, store)
    assert reused is not None and reused.neurons == protection.neurons
    assert reused.source["reused_from"] == first.id
    for changes in ({"ratio": 0.02}, {"texts": 16}, {"seed": 1}, {"limit": 100}, {"model": "other"}):
        assert reusable_protection(ProtectExperimentSpec(**{"model": "tiny", **changes}), store) is None
