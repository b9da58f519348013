"""The results store: round trip, first writer wins, variant join, concurrent writers, sweep cells."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from backend.errors import UserError
from backend.evaluation.store import DENSE, ResultKey, ResultsStore, database_path

METRICS = {"alias": "sst2", "acc,none": 0.625, "acc_stderr,none": 0.0776}


def _key(task="sst2", variant=DENSE, limit=40, source="packaged", base="tiny") -> ResultKey:
    return ResultKey(base, variant, task, limit, source, "0.4.13")


def test_round_trip_keeps_lm_evals_result_dict(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    stored = store.put(_key(), n_examples=40, metrics=METRICS, task_version="1.0", seconds=1.5)
    again = ResultsStore(f"sqlite:///{tmp_path / 'results.db'}").get(_key())
    assert again.metrics == METRICS and again.n_examples == 40 and again.task_version == "1.0"
    assert again.metric() == 0.625 and again.stderr() == 0.0776
    assert again.key == stored.key and again.variant is None
    # Every part of the key matters.
    for other in (_key(limit=None), _key(limit=20), _key(source="hub"), _key(variant="v1"),
                  _key(task="rte"), _key(base="other")):
        assert store.get(other) is None
    whole = store.put(_key(limit=None), n_examples=872, metrics=METRICS)
    assert whole.key.limit is None and store.get(_key(limit=None)).n_examples == 872


def test_an_existing_key_is_never_overwritten(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    store.put(_key(), n_examples=40, metrics=METRICS)
    kept = store.put(_key(), n_examples=40, metrics={"acc,none": 0.0})
    assert kept.metrics == METRICS and store.count() == 1


def test_results_join_the_variant_manifest(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    store.record_variant({"id": "wanda-c4-s0.5-abc", "base_model": "tiny", "method": "wanda",
                          "calibration": "c4", "sparsity": "0.5", "seqlen": 128, "nsamples": 8, "seed": 0})
    store.put(_key(variant="wanda-c4-s0.5-abc"), n_examples=40, metrics=METRICS)
    store.put(_key(), n_examples=40, metrics=METRICS)
    variant_row, dense_row = store.results(variant_id="wanda-c4-s0.5-abc")[0], store.results(variant_id=DENSE)[0]
    assert variant_row.variant == {"method": "wanda", "calibration": "c4", "sparsity": "0.5", "seqlen": 128,
                                   "nsamples": 8, "seed": 0}
    assert dense_row.variant is None and dense_row.to_json()["variant_id"] is None


def test_database_location_forms(tmp_path):
    assert database_path(f"sqlite:///{tmp_path}/r.db") == tmp_path / "r.db"
    assert database_path("sqlite:///relative/r.db").as_posix() == "relative/r.db"
    with pytest.raises(UserError, match="only sqlite"):
        database_path("postgresql://host/db")
    with pytest.raises(UserError, match="not a database|results database"):
        (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
        ResultsStore(tmp_path / "junk.db")


def test_store_uses_wal_and_a_busy_timeout(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    with store._reader() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 60000


def _writer(path: str, worker: int, count: int) -> None:
    store = ResultsStore(path)
    for index in range(count):
        # Each writer stores its own keys plus keys that every writer also stores.
        store.put(_key(task=f"w{worker}-{index}"), n_examples=index, metrics={"acc,none": worker})
        store.put(_key(task=f"shared-{index}"), n_examples=index, metrics={"acc,none": worker})
        store.record_cell("sweep", f"cell-{index % 5}", "done", detail={"worker": worker})


def test_concurrent_writers_lose_nothing_and_never_corrupt(tmp_path):
    path = str(tmp_path / "results.db")
    ResultsStore(path)
    workers, count = 4, 30
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_writer, args=(path, worker, count)) for worker in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
        assert process.exitcode == 0
    store = ResultsStore(path)
    assert store.count() == workers * count + count  # own keys + one row per shared key
    shared = [r for r in store.results() if r.key.task.startswith("shared-")]
    assert all(r.metrics["acc,none"] in range(workers) for r in shared)
    assert len(store.cells("sweep")) == 5
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sweep_cells_upsert(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    store.record_cell("grid", "m|dense", "failed", error="boom")
    store.record_cell("grid", "m|dense", "done", variant_id=None, detail={"computed": 2})
    store.record_cell("other", "m|dense", "failed", error="x")
    cells = store.cells("grid")
    assert list(cells) == ["m|dense"]
    assert cells["m|dense"]["status"] == "done" and cells["m|dense"]["error"] is None
    assert cells["m|dense"]["detail"] == {"computed": 2}


def test_a_schema_1_store_is_upgraded_its_rows_stale_and_first_rows_runs_never_samples(tmp_path):
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as conn:  # the schema-1 results table, one limited and one whole run
        conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, base_model TEXT NOT NULL, variant_id TEXT "
                     "NOT NULL, task TEXT NOT NULL, limit_n INTEGER NOT NULL, data_source TEXT NOT NULL, "
                     "harness_version TEXT NOT NULL, n_examples INTEGER NOT NULL, metrics TEXT NOT NULL, "
                     "task_version TEXT, task_config TEXT, seconds REAL, created_at TEXT NOT NULL, UNIQUE "
                     "(base_model, variant_id, task, limit_n, data_source, harness_version))")
        for limit in (40, -1):
            conn.execute("INSERT INTO results (base_model, variant_id, task, limit_n, data_source, harness_version, "
                         "n_examples, metrics, created_at) VALUES ('tiny', '', 'sst2', ?, 'packaged', '0.4.13', 40, "
                         "'{\"acc,none\": 0.5}', 'then')", (limit,))
    store = ResultsStore(path)
    assert store.count() == 2
    # Nothing says which code computed schema-1 rows: kept and listed as stale, never served.
    assert store.get(_key(limit=None)) is None and store.get(_key()) is None
    old = {r.key.limit: r for r in store.results()}
    assert all(r.stale and r.key.code_version == "" for r in old.values())
    assert old[None].metric() == 0.5
    assert old[40].key.sample_seed == -2  # the first 40 rows, never taken for a seeded sample
    store.put(ResultKey("tiny", DENSE, "sst2", 40, "packaged", "0.4.13", 1234), n_examples=40,
              metrics=METRICS, outcomes={"acc": {3: 1.0, 9: 0.0}})
    assert store.count() == 3
    assert store.outcomes(ResultKey("tiny", DENSE, "sst2", 40, "packaged", "0.4.13", 1234)) == {
        "acc": {3: 1.0, 9: 0.0}}
    assert ResultsStore(path).count() == 3  # reopening upgrades nothing twice


def test_the_number_of_demonstrations_is_part_of_the_key(tmp_path):
    store = ResultsStore(tmp_path / "results.db")
    zero = ResultKey("tiny", DENSE, "sst2", 40, "packaged", "0.4.13", 1234)
    five = ResultKey("tiny", DENSE, "sst2", 40, "packaged", "0.4.13", 1234, num_fewshot=5)
    assert zero.num_fewshot == 0 and zero.row() != five.row()
    store.put(zero, n_examples=40, metrics={"acc,none": 0.6}, outcomes={"acc": {1: 1.0}})
    assert store.get(five) is None and store.outcomes(five) is None  # a 0-shot score never stands in
    store.put(five, n_examples=40, metrics={"acc,none": 0.4}, outcomes={"acc": {1: 0.0}})
    assert store.count() == 2
    assert store.get(zero).metric() == 0.6 and store.get(five).metric() == 0.4
    assert store.outcomes(zero) == {"acc": {1: 1.0}} and store.outcomes(five) == {"acc": {1: 0.0}}
    assert {r.key.num_fewshot: r.metric() for r in store.results()} == {0: 0.6, 5: 0.4}
    assert store.get(five).to_json()["num_fewshot"] == 5


def test_a_schema_3_store_gets_zero_shots_for_its_rows(tmp_path):
    path = tmp_path / "results.db"
    key = ResultKey("tiny", DENSE, "sst2", 40, "packaged", "0.4.13", 1234)
    with sqlite3.connect(path) as conn:  # the schema-3 results table (no num_fewshot), one current row
        conn.execute("CREATE TABLE results (id INTEGER PRIMARY KEY, base_model TEXT NOT NULL, variant_id TEXT "
                     "NOT NULL, task TEXT NOT NULL, limit_n INTEGER NOT NULL, data_source TEXT NOT NULL, "
                     "harness_version TEXT NOT NULL, code_version TEXT NOT NULL, n_examples INTEGER NOT NULL, "
                     "metrics TEXT NOT NULL, task_version TEXT, task_config TEXT, seconds REAL, created_at TEXT "
                     "NOT NULL, sample_seed INTEGER NOT NULL DEFAULT -1, UNIQUE (base_model, variant_id, task, "
                     "limit_n, sample_seed, data_source, harness_version, code_version))")
        conn.execute("CREATE TABLE example_outcomes (result_id INTEGER PRIMARY KEY, outcomes TEXT NOT NULL)")
        conn.execute("INSERT INTO results (id, base_model, variant_id, task, limit_n, data_source, harness_version, "
                     "code_version, n_examples, metrics, created_at, sample_seed) VALUES (7, 'tiny', '', 'sst2', 40, "
                     "'packaged', '0.4.13', ?, 40, '{\"acc,none\": 0.5}', 'then', 1234)", (key.code_version,))
        conn.execute("INSERT INTO example_outcomes VALUES (7, '{\"acc\": {\"3\": 1.0}}')")
    store = ResultsStore(path)
    assert store.get(key).metric() == 0.5 and store.outcomes(key) == {"acc": {3: 1.0}}  # read as 0-shot
    store.put(ResultKey(*key.row()[:3], 40, "packaged", "0.4.13", 1234, num_fewshot=3), n_examples=40,
              metrics={"acc,none": 0.7})
    assert store.count() == 2 and ResultsStore(path).count() == 2
