"""Sweeps on tiny models: the grid, bad specs, a failing cell, kill-and-resume, and Ray's local mode."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from backend.cli import main
from backend.errors import UserError
from backend.evaluation import sweep as sweep_module
from backend.evaluation.store import ResultsStore
from backend.evaluation.sweep import (
    SweepSpec,
    load_sweep_spec,
    parse_sweep_spec,
    run_sweep,
    sweep_cells,
)


@pytest.fixture
def calibration(calibration_file) -> str:
    return calibration_file


def _spec(models, calibration, **overrides) -> SweepSpec:
    data = {"name": "grid", "models": models, "methods": ["magnitude", "wanda"], "calibrations": [calibration],
            "sparsities": ["0.5"], "seqlens": [32], "nsamples": 4, "tasks": ["sst2"], "limit": 3,
            "batch_size": 4} | overrides
    return parse_sweep_spec(data)


def test_grid_pairs_methods_with_their_kind_of_sparsity():
    spec = SweepSpec(name="g", models=("m",), tasks=("sst2",), methods=("magnitude", "wanda", "mi"),
                     calibrations=("c4", "sst2"), sparsities=("0.5", "2:4", "neurons:0.2"), seqlens=(64, 128))
    keys = [cell.key for cell in sweep_cells(spec)]
    assert keys[0] == "m|dense"
    assert sum(k.startswith("m|magnitude|-|") for k in keys) == 2  # no calibration axis: 2 sparsities
    assert sum(k.startswith("m|wanda|") for k in keys) == 2 * 2 * 2  # calibrations x sparsities x seqlens
    assert sum(k.startswith("m|mi|") for k in keys) == 2 * 1 * 2  # neuron ratios only
    assert len(keys) == len(set(keys)) == 1 + 2 + 8 + 4


def test_shots_for_every_task_or_per_task():
    every = parse_sweep_spec({"models": ["m"], "tasks": ["sst2", "copa"], "num_fewshot": 3})
    assert every.fewshot() == {"sst2": 3, "copa": 3}
    named = parse_sweep_spec({"models": ["m"], "tasks": ["sst2", "copa"], "num_fewshot": {"sst2": 5}})
    assert named.fewshot() == {"sst2": 5, "copa": 0}
    assert parse_sweep_spec({"models": ["m"], "tasks": ["sst2"]}).fewshot() == {"sst2": 0}


@pytest.mark.parametrize("data,message", [
    ({"models": ["m"], "tasks": ["sst2"], "sparsity": ["0.5"]}, "unknown key"),
    ({"models": ["m"], "tasks": ["sst9"]}, "unknown task 'sst9'"),
    ({"models": ["m"], "tasks": ["sst2"], "methods": ["wanda"], "sparsities": ["0.5x"]}, "0.5x"),
    ({"models": ["m"], "tasks": ["sst2"], "methods": ["prune-it"]}, "unknown method"),
    ({"models": ["m"], "tasks": ["sst2"], "limit": 0}, "limit"),
    ({"models": [], "tasks": ["sst2"]}, "models"),
    (["not", "a", "mapping"], "mapping"),
    ({"models": ["m"], "tasks": ["sst2"], "num_fewshot": -1}, "num_fewshot must be an integer from 0 to 64"),
    ({"models": ["m"], "tasks": ["sst2"], "num_fewshot": {"sst9": 1}}, "num_fewshot: unknown task 'sst9'"),
])
def test_malformed_specs_are_one_clear_line(data, message):
    with pytest.raises(UserError, match=message) as error:
        parse_sweep_spec(data)
    assert "\n" not in str(error.value)


def test_cli_rejects_bad_yaml_with_exit_2(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text("models: [m\ntasks: sst2\n")
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "malformed YAML" in err[0] and "grid.yaml" in err[0]
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2


def test_local_sweep_failing_cell_and_kill_and_resume(isolated_cache, tiny_model_dir, calibration, tmp_path,
                                                      monkeypatch, capsys):
    model = str(tiny_model_dir("llama"))
    broken = tmp_path / "broken-model"
    broken.mkdir()  # a folder without config.json: its cells fail at load
    spec_path = tmp_path / "grid.yaml"
    spec_path.write_text(yaml.safe_dump({"name": "grid", "models": [model, str(broken)],
                                         "methods": ["magnitude", "wanda"], "calibrations": [calibration],
                                         "sparsities": ["0.5"], "seqlens": [32], "nsamples": 4,
                                         "tasks": ["sst2", "rte"], "limit": 3, "batch_size": 4}))
    spec = load_sweep_spec(spec_path)
    assert len(sweep_cells(spec)) == 6  # per model: dense, magnitude, wanda

    finished = []

    def kill_after_two(_fraction, message):  # the process dies after its second finished cell
        finished.append(message)
        if len(finished) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, progress=kill_after_two)
    store = ResultsStore.from_settings()
    assert [c["status"] for c in store.cells("grid").values()] == ["done", "done"]
    assert store.count() == 4  # dense and magnitude, 2 tasks each

    computed_cells = []
    real_run_cell = sweep_module.run_cell
    monkeypatch.setattr(sweep_module, "run_cell", lambda cell, s: computed_cells.append(cell.key)
                        or real_run_cell(cell, s))
    report = run_sweep(spec)
    assert report.skipped == 2 and len(report.outcomes) == 4
    assert computed_cells[0].startswith(f"{model}|wanda|")  # only the missing cells ran
    done = [o for o in report.outcomes if o.status == "done"]
    assert len(done) == 1 and done[0].computed == 2 and done[0].reused == 0
    assert len(report.failed) == 3 and all("config.json" in o.error for o in report.failed)
    cells = store.cells("grid")
    assert sum(c["status"] == "failed" for c in cells.values()) == 3
    assert all(c["error"] for c in cells.values() if c["status"] == "failed")
    # A failing cell wrote nothing: 3 good cells x 2 tasks, and the file is sound.
    assert store.count() == 6 and len({r.key.variant_id for r in store.results()}) == 3
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    computed_cells.clear()  # a third run, from the CLI, retries only the failed cells
    assert main(["sweep", str(spec_path), "--json"]) == 1  # exit 1: some cells failed
    third = json.loads(capsys.readouterr().out)
    assert third["skipped"] == 3 and third["failed"] == 3
    assert all(key.startswith(str(broken)) for key in computed_cells)


def test_ray_local_mode_gives_the_same_numbers(isolated_cache, tiny_model_dir, calibration, monkeypatch):
    ray = pytest.importorskip("ray")
    model = str(tiny_model_dir("llama", seed=2))
    spec = _spec([model], calibration, methods=["magnitude"], tasks=["sst2"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_sweep(spec, ray_address="local")
    finally:
        ray.shutdown()
    assert [o.status for o in report.outcomes] == ["done", "done"], [o.error for o in report.outcomes]
    assert all(o.computed == 1 for o in report.outcomes)
    store = ResultsStore.from_settings()
    on_ray = {r.key.variant_id: r.metrics for r in store.results()}
    assert len(on_ray) == 2

    # The same grid in this process, into a fresh store: same variants reused, same accuracies.
    monkeypatch.setenv("PRUNELENS_RESULTS_URL", str(isolated_cache.cache_dir / "local.db"))
    local = run_sweep(spec)
    assert all(o.status == "done" and o.computed == 1 for o in local.outcomes)
    assert {r.key.variant_id: r.metrics for r in ResultsStore.from_settings().results()} == on_ray
