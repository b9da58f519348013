"""The paper's tables from a store filled by hand: exact means, missing cells never zero, CLI output."""

from __future__ import annotations

import csv
import io
import json

import pytest

from backend.cli import main
from backend.errors import UserError
from backend.evaluation.store import DENSE, ResultKey, ResultsStore
from backend.evaluation.tables import MISSING_MARKDOWN, build_table, latest_results
from backend.evaluation.uncertainty import Z95

# (variant id, method, calibration, sparsity, seqlen)
VARIANTS = [
    ("w-c4-05", "wanda", "c4", "0.5", 128),
    ("w-c4-24", "wanda", "c4", "2:4", 128),
    ("s-c4-05", "sparsegpt", "c4", "0.5", 128),
    ("w-sst2-05", "wanda", "sst2", "0.5", 256),
]
# (model, variant, task) -> accuracy; rte has no sst2-calibrated result (a missing cell).
ACC = {
    ("m1", "w-c4-05", "sst2"): 0.60, ("m1", "w-c4-24", "sst2"): 0.50, ("m1", "s-c4-05", "sst2"): 0.70,
    ("m1", "w-sst2-05", "sst2"): 0.80, ("m1", DENSE, "sst2"): 0.90,
    ("m1", "w-c4-05", "rte"): 0.40, ("m1", "w-c4-24", "rte"): 0.30, ("m1", "s-c4-05", "rte"): 0.50,
    ("m1", "w-c4-05", "boolq"): 0.55,
    ("m2", DENSE, "sst2"): 0.65,
}


@pytest.fixture
def filled_store(isolated_cache) -> ResultsStore:
    store = ResultsStore.from_settings()
    for variant_id, method, calibration, sparsity, seqlen in VARIANTS:
        store.record_variant({"id": variant_id, "base_model": "m1", "method": method, "calibration": calibration,
                              "sparsity": sparsity, "seqlen": seqlen, "nsamples": 8, "seed": 0})
    for (model, variant, task), accuracy in ACC.items():
        store.put(ResultKey(model, variant, task, 100, "packaged", "0.4.13"), n_examples=100,
                  metrics={"acc,none": accuracy, "acc_stderr,none": 0.05})
    # A quick --limit run of the same cell must not dilute the full one.
    store.put(ResultKey("m1", "w-c4-05", "sst2", 4, "packaged", "0.4.13"), n_examples=4,
              metrics={"acc,none": 0.0})
    return store


def _cells(table) -> dict[tuple[str, str], float | None]:
    return {(label, column): value for label, values in table.rows for column, value in zip(table.columns, values)}


def test_task_calibration_is_the_mean_over_methods_and_sparsities(filled_store):
    table = build_table("task-calibration", filled_store.results(), model="m1")
    assert table.columns == ["dense", "c4", "sst2"]
    assert [label for label, _ in table.rows] == ["sst2", "boolq", "rte"]  # registry order
    cells = _cells(table)
    assert cells["sst2", "c4"] == pytest.approx((0.60 + 0.50 + 0.70) / 3)
    assert cells["sst2", "sst2"] == pytest.approx(0.80)
    assert cells["sst2", "dense"] == pytest.approx(0.90)
    assert cells["rte", "c4"] == pytest.approx(0.40)
    assert cells["rte", "sst2"] is None and cells["rte", "dense"] is None  # missing, not zero


def test_other_views(filled_store):
    results = filled_store.results()
    sparsity = _cells(build_table("task-sparsity", results, model="m1", method="wanda"))
    assert sparsity["sst2", "0.5"] == pytest.approx((0.60 + 0.80) / 2)
    assert sparsity["sst2", "2:4"] == pytest.approx(0.50)
    seqlen = build_table("task-seqlen", results, model="m1", calibration="c4")
    assert seqlen.columns == ["128"] and _cells(seqlen)["rte", "128"] == pytest.approx(0.40)
    methods = _cells(build_table("method-calibration", results, model="m1"))
    assert methods["wanda", "c4"] == pytest.approx((0.60 + 0.50 + 0.40 + 0.30 + 0.55) / 5)
    assert methods["sparsegpt", "c4"] == pytest.approx((0.70 + 0.50) / 2)
    categories = _cells(build_table("category-calibration", results, model="m1"))
    assert categories["qa", "c4"] == pytest.approx(0.55)  # boolq is question answering
    assert categories["similarity", "c4"] == pytest.approx((0.40 + 0.30 + 0.50) / 3)
    models = build_table("model-calibration", results, task="sst2")
    assert _cells(models)["m2", "dense"] == pytest.approx(0.65) and _cells(models)["m2", "c4"] is None
    with pytest.raises(UserError, match="--task"):
        build_table("model-calibration", results)
    with pytest.raises(UserError, match="unknown table"):
        build_table("task-everything", results)


def test_latest_results_prefers_the_run_on_most_examples(filled_store):
    chosen = [r for r in latest_results(filled_store.results())
              if (r.key.variant_id, r.key.task) == ("w-c4-05", "sst2")]
    assert len(chosen) == 1 and chosen[0].n_examples == 100


def test_markdown_and_csv_show_missing_cells_as_missing(filled_store):
    table = build_table("task-calibration", filled_store.results(), model="m1")
    markdown = table.to_markdown()
    rte_line = next(line for line in markdown.splitlines() if line.startswith("| rte "))
    assert rte_line.split("|")[2].strip() == MISSING_MARKDOWN and "40.00" in rte_line
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0][:4] == ["task", "dense", "c4", "sst2"]
    assert rows[0][4:11] == ["dense low", "dense high", "dense diff to dense", "dense diff low",
                             "dense diff high", "dense diff p", "dense diff verdict"]
    rte = next(row for row in rows if row[0] == "rte")
    assert rte[1] == "" and rte[3] == "" and float(rte[2]) == pytest.approx(0.40)
    c4_low = rows[0].index("c4 low")
    assert float(rte[c4_low]) == pytest.approx(0.40 - Z95 * 0.05)  # one result: lm-eval's stderr
    assert float(rte[c4_low + 1]) == pytest.approx(0.40 + Z95 * 0.05)


def test_cli_table(filled_store, capsys, tmp_path):
    assert main(["table", "task-calibration", "--model", "m1", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("task,dense,c4,sst2,dense low,")
    target = tmp_path / "table.json"
    assert main(["table", "method-calibration", "--model", "m1", "--format", "json", "--output", str(target)]) == 0
    payload = json.loads(target.read_text())
    assert payload["rows"][0]["label"] == "dense" and payload["rows"][1]["counts"][0] == 0
    assert main(["table", "model-calibration"]) == 2
    assert "--task" in capsys.readouterr().err
