"""A study on a real two-node Ray cluster on loopback (``tests.ray_cluster``): a tiny model, three
sweeps (dense, C1, C3), cells as Ray tasks on both nodes. It stores the same cells, variants and
per-example scores as the same study run in this process, gives the same verdicts, and computes no
result twice (the dense cell C3 shares with the dense sweep is read back, not recomputed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from backend.cli import main
from backend.config import get_settings
from backend.evaluation.store import ResultsStore
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


def test_a_study_on_ray_stores_what_a_local_run_stores_and_nothing_twice(isolated_cache, tiny_model_dir,
                                                                         calibration_file, tmp_path, monkeypatch,
                                                                         capsys):
    spec = _spec(tmp_path / "tiny.yaml", str(tiny_model_dir("llama")), calibration_file)
    local_report = _run(["study", str(spec)], tmp_path / "local-report", capsys)
    local_cells, local_scores, local_rows = _stored()
    assert all(status == "done" for sweep in local_cells.values() for status, _, _ in sweep.values())
    assert len(local_scores) == 4  # dense, wanda, magnitude 0.3 and 0.5, on sst2

    # The same study on the cluster, into a fresh cache: variants and results computed there.
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
    ray_cells, ray_scores, ray_rows = _stored()
    get_settings.cache_clear()

    assert ray_cells == local_cells  # same cells, same statuses, same variant ids
    assert ray_scores == local_scores  # the same examples scored the same way
    assert set(ray_rows) == set(local_rows) and set(ray_rows.values()) == {1}  # no result stored twice
    assert _verdicts(ray_report) == _verdicts(local_report)

    store = ResultsStore(tmp_path / "ray-cache" / "results.db")
    details = [store.cells(f"tiny-default-{sweep}") for sweep in SWEEPS]
    workers = [record["detail"]["worker"] for sweep in details for record in sweep.values()]
    assert len(workers) == 1 + 1 + 3 and len({worker["node_id"] for worker in workers}) == 2  # both nodes
    computed = sum(record["detail"]["computed"] for sweep in details for record in sweep.values())
    reused = sum(record["detail"]["reused"] for sweep in details for record in sweep.values())
    assert computed == len(ray_rows) == 4 and reused == 1  # C3's dense cell read the dense sweep's result
