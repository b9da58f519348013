"""A study on a real two-node Ray cluster on loopback (``tests.ray_cluster``): a tiny model, three
sweeps (dense, C1, C3), cells as Ray tasks on both nodes. It stores the same cells, variants and
per-example scores as the same study run in this process, gives the same verdicts, and computes no
result twice (the dense cell C3 shares with the dense sweep is read back, not recomputed). A worker
SIGKILLed mid-cell (``sweep_ray.KILL_ONCE_ENV``) costs a rerun of that cell, nothing else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend.cli import main
from backend.config import get_settings
from backend.evaluation.store import ResultsStore
from backend.evaluation.sweep_ray import KILL_ONCE_ENV
from tests.ray_cluster import CLUSTER_ENVIRONMENT, MISSING_REASON, loopback_cluster, ray_available, wait_for_nodes

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not ray_available(), reason=MISSING_REASON)]
SWEEPS = ("dense", "C1", "C3")


def _spec(path: Path, model: str, calibration: str) -> Path:
    path.write_text(yaml.safe_dump({
        "name": "tiny", "settings": {"model": model, "limit": 3, "nsamples": 4, "batch_size": 4, "resamples": 200},
        "claims": {
            "C1": {"grid": {"methods": ["wanda"], "calibrations": [calibration], "sparsities": ["0.5"],
                            "seqlens": [32], "tasks": ["sst2"]}},
            "C3": {"grid": {"methods": ["magnitude"], "sparsities": ["0.3", "0.5"], "dense": True,
                            "tasks": ["sst2"]}},
        }}), encoding="utf-8")
    return path


def _stored() -> tuple[dict, dict, dict]:
    """(cell records per sweep, per-example scores per (variant, task), number of result rows per key)."""
    store = ResultsStore.from_settings()
    cells = {sweep: {key: (record["status"], record["variant_id"], record["error"])
                     for key, record in store.cells(f"tiny-default-{sweep}").items()} for sweep in SWEEPS}
    results = store.results()
    scores = {(r.key.variant_id, r.key.task): store.outcomes(r.key) for r in results}
    rows: dict[tuple, int] = {}
    for result in results:
        rows[result.key.row()] = rows.get(result.key.row(), 0) + 1
    return cells, scores, rows


def _run(argv: list[str], out: Path, capsys) -> dict:
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return json.loads((out / "study.json").read_text(encoding="utf-8"))


def _verdicts(report: dict) -> list[tuple]:
    return [(claim["id"], claim["verdict"], claim["ours"]) for claim in report["claims"]]


def _worker_details(cache: Path) -> list[dict]:
    """The stored details (worker, computed, reused) of every cell of the study's sweeps."""
    store = ResultsStore(cache / "results.db")
    return [record["detail"] for sweep in SWEEPS for record in store.cells(f"tiny-default-{sweep}").values()]


def _local_then_ray(spec: Path, tmp_path: Path, monkeypatch, capsys) -> tuple[dict, tuple, dict, tuple]:
    """(report, stored) of the study run here, then of the same study on the cluster into a fresh
    cache (variants and results computed there)."""
    local_report = _run(["study", str(spec)], tmp_path / "local-report", capsys)
    local_stored = _stored()
    assert all(status == "done" for sweep in local_stored[0].values() for status, _, _ in sweep.values())
    assert len(local_stored[1]) == 4  # dense, wanda, magnitude 0.3 and 0.5, on sst2

    monkeypatch.setenv("PRUNELENS_CACHE_DIR", str(tmp_path / "ray-cache"))
    get_settings.cache_clear()
    with loopback_cluster() as (address, _temp_dir):
        for key, value in CLUSTER_ENVIRONMENT.items():
            monkeypatch.setenv(key, value)
        import ray

        ray.init(address=address, log_to_driver=False)
        try:
            wait_for_nodes(2)
            ray_report = _run(["study", str(spec), "--ray-address", address], tmp_path / "ray-report", capsys)
        finally:
            ray.shutdown()
    ray_stored = _stored()
    get_settings.cache_clear()
    return local_report, local_stored, ray_report, ray_stored


def test_a_study_on_ray_stores_what_a_local_run_stores_and_nothing_twice(isolated_cache, tiny_model_dir,
                                                                         calibration_file, tmp_path, monkeypatch,
                                                                         capsys):
    spec = _spec(tmp_path / "tiny.yaml", str(tiny_model_dir("llama")), calibration_file)
    local_report, (local_cells, local_scores, local_rows), ray_report, (ray_cells, ray_scores, ray_rows) = \
        _local_then_ray(spec, tmp_path, monkeypatch, capsys)

    assert ray_cells == local_cells  # same cells, same statuses, same variant ids
    assert ray_scores == local_scores  # the same examples scored the same way
    assert set(ray_rows) == set(local_rows) and set(ray_rows.values()) == {1}  # no result stored twice
    assert _verdicts(ray_report) == _verdicts(local_report)

    details = _worker_details(tmp_path / "ray-cache")
    workers = [detail["worker"] for detail in details]
    assert len(workers) == 1 + 1 + 3 and len({worker["node_id"] for worker in workers}) == 2  # both nodes
    computed = sum(detail["computed"] for detail in details)
    reused = sum(detail["reused"] for detail in details)
    assert computed == len(ray_rows) == 4 and reused == 1  # C3's dense cell read the dense sweep's result


def test_a_worker_killed_mid_cell_costs_a_rerun_of_that_cell_and_nothing_is_stored_twice(
        isolated_cache, tiny_model_dir, calibration_file, tmp_path, monkeypatch, capsys):
    # The first pruned cell to have its result stored SIGKILLs its own worker before returning.
    faults = tmp_path / "faults"
    faults.mkdir()
    monkeypatch.setenv(KILL_ONCE_ENV, str(faults))
    spec = _spec(tmp_path / "tiny.yaml", str(tiny_model_dir("llama")), calibration_file)
    local_report, (local_cells, local_scores, local_rows), ray_report, (ray_cells, ray_scores, ray_rows) = \
        _local_then_ray(spec, tmp_path, monkeypatch, capsys)  # _run: exit 0 both times
    killed_pid = int((faults / "killed").read_text())  # the local run never kills (its cells are no Ray tasks)

    assert ray_cells == local_cells  # every cell done, with the same variant ids: the report is complete
    assert ray_scores == local_scores
    assert set(ray_rows) == set(local_rows) and set(ray_rows.values()) == {1}  # no result stored twice
    assert _verdicts(ray_report) == _verdicts(local_report)

    details = _worker_details(tmp_path / "ray-cache")
    assert len(details) == 1 + 1 + 3 and killed_pid not in {detail["worker"]["pid"] for detail in details}
    # The rerun of the killed cell found its variant and its stored result and computed nothing:
    # 3 results computed by cells that returned, 1 by the killed attempt, 2 read back (it and C3's dense).
    assert sum(detail["computed"] for detail in details) == len(ray_rows) - 1 == 3
    assert sum(detail["reused"] for detail in details) == 2
    variants = [path.name for path in (tmp_path / "ray-cache" / "variants").iterdir()]
    assert sorted(variants) == sorted({variant for sweep in local_cells.values() for _, variant, _ in sweep.values()
                                       if variant})  # each variant pruned once, no leftover staging folder
