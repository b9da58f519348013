"""Results are keyed by the evaluation code that computed them: a result stored by other code is
reported as stale, left out of tables and computed again, never served as current."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from backend.evaluation import code_version
from backend.evaluation.code_version import EVALUATION_SOURCES, evaluation_code_version
from backend.evaluation.runner import DEFAULT_SAMPLE_SEED, evaluate, harness_version
from backend.evaluation.store import DENSE, ResultKey, ResultsStore
from backend.evaluation.tables import latest_results
from tests.conftest import tiny_loaded

PLANTED = {"alias": "sst2", "acc,none": 2.0, "acc_stderr,none": 0.0}  # no real accuracy is 2


@pytest.fixture
def store(isolated_cache, monkeypatch) -> ResultsStore:
    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    return ResultsStore.from_settings()


def test_a_result_from_other_code_is_stale_and_computed_again(store):
    loaded = tiny_loaded("llama", seed=2)
    old = ResultKey(loaded.name, DENSE, "sst2", 6, "packaged", harness_version(), DEFAULT_SAMPLE_SEED,
                    code_version="0123456789ab")  # the same examples, other code
    store.put(old, n_examples=6, metrics=PLANTED)
    assert store.get(old).stale and store.get(old).to_json()["stale"] is True

    [result] = evaluate(loaded, "sst2", limit=6, store=store)
    assert not result.reused and not result.stored.stale
    assert result.stored.key.code_version == evaluation_code_version() != old.code_version
    assert 0.0 <= result.stored.metric() <= 1.0  # lm-eval's number, not the planted 2.0
    both = store.results(task="sst2")
    assert [row.stale for row in both] == [True, False]
    assert latest_results(both) == [result.stored]  # tables show the current one only
    [again] = evaluate(loaded, "sst2", limit=6, store=store)
    assert again.reused and again.stored.metrics == result.stored.metrics


def test_a_version_1_database_keeps_its_rows_as_stale(tmp_path):
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as conn:  # the version-1 layout, without code_version
        conn.execute(
            "CREATE TABLE results (id INTEGER PRIMARY KEY, base_model TEXT NOT NULL, variant_id TEXT "
            "NOT NULL, task TEXT NOT NULL, limit_n INTEGER NOT NULL, data_source TEXT NOT NULL, "
            "harness_version TEXT NOT NULL, n_examples INTEGER NOT NULL, metrics TEXT NOT NULL, "
            "task_version TEXT, task_config TEXT, seconds REAL, created_at TEXT NOT NULL, UNIQUE "
            "(base_model, variant_id, task, limit_n, data_source, harness_version))"
        )
        conn.execute("INSERT INTO results VALUES (1, 'm', '', 'sst2', 40, 'packaged', '0.4.13', 40, "
                     "'{\"acc,none\": 0.5}', NULL, NULL, 1.0, '2026-11-01T00:00:00+00:00')")
    store = ResultsStore(path)
    [row] = store.results()
    assert row.stale and row.key.code_version == "" and row.metrics == {"acc,none": 0.5}
    current = ResultKey("m", DENSE, "sst2", 40, "packaged", "0.4.13")
    assert store.get(current) is None  # the old row is not served under the current key
    store.put(current, n_examples=40, metrics={"acc,none": 0.75})
    assert [r.stale for r in ResultsStore(path).results()] == [True, False]


@pytest.mark.parametrize("edited", ["runner.py", "tasks/imdb.yaml"])
def test_editing_an_evaluation_source_changes_the_code_version(tmp_path, monkeypatch, edited):
    package = tmp_path / "evaluation"
    source = code_version._PACKAGE
    package.mkdir()
    for name in EVALUATION_SOURCES:
        copy = shutil.copytree if (source / name).is_dir() else shutil.copy2
        copy(source / name, package / name)
    monkeypatch.setattr(code_version, "_PACKAGE", package)
    compute = evaluation_code_version.__wrapped__
    assert compute() == evaluation_code_version()  # same bytes, same version
    with (package / edited).open("a", encoding="utf-8") as handle:
        handle.write("\n# edited\n")
    assert compute() != evaluation_code_version()
