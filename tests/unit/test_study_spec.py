"""Study specs: the shipped one loads under each profile; bad input is one line, exit 2, nothing written;
a synthetic results store with planted truth is read back into a replicated claim."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from backend.cli import main
from backend.errors import UserError
from backend.evaluation.store import ResultKey, ResultsStore
from backend.evaluation.sweep import sweep_cells
from backend.studies.claims import NOT_RUN, REPLICATED, judge_c1, judge_c4
from backend.studies.evidence import read_evidence, sweep_for
from backend.studies.spec import load_study, parse_study, resolve

SPEC = Path(__file__).resolve().parents[2] / "studies" / "nsa-paper.yaml"


def _spec() -> dict:
    return yaml.safe_load(SPEC.read_text(encoding="utf-8"))


def test_shipped_spec_has_every_claim_and_three_profiles():
    spec = load_study(SPEC)
    assert sorted(spec.claims) == ["C1", "C2", "C3", "C4", "C5", "C6"]
    assert sorted(spec.profiles) == ["7b", "embedded", "quick"]
    quick = resolve(spec, "quick")
    assert quick.settings.limit == 100 and quick.skipped == ("C5",)
    assert quick.claims["C1"].grid.calibrations == ("sst2", "boolq")
    assert resolve(spec, "7b").settings.limit is None


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["claims"].update({"C9": {}}), "unknown claim 'C9'"),
    (lambda d: d["claims"]["C1"]["grid"].update({"tasks": ["sst2", "nosuchtask"]}), "unknown task 'nosuchtask'"),
    (lambda d: d["claims"]["C1"]["grid"].update({"methods": ["nosuchmethod"]}), "unknown method 'nosuchmethod'"),
    (lambda d: d["claims"]["C1"]["grid"].update({"colour": "red"}), "claims.C1.grid.colour: unknown field"),
    (lambda d: d["settings"].update({"limit": 0}), "settings.limit"),
    (lambda d: d["profiles"]["quick"]["claims"].update({"C1": {"tasks": ["bogus"]}}), "unknown task 'bogus'"),
])
def test_bad_specs_are_one_line(change, message):
    data = _spec()
    change(data)
    with pytest.raises(UserError, match=message) as raised:
        parse_study(data)
    assert "\n" not in str(raised.value)


def _run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "report"
    code, err = _run_cli(["study", str(SPEC), "--profile", "nope", "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "no profile 'nope'; profiles: quick, embedded, 7b" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nclaims: [unclosed\n", encoding="utf-8")
    code, err = _run_cli(["study", str(broken), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and "malformed YAML" in err
    code, err = _run_cli(["study", str(tmp_path / "missing.yaml"), "--out", str(out)], capsys)
    assert code == 2 and "study spec not found" in err
    assert list(tmp_path.iterdir()) == [broken]


def _planted_store(tmp_path, study, claim_id: str, accuracy) -> ResultsStore:
    """Every cell of the claim's sweep stored as done, with per-example scores drawn from
    ``accuracy(task, calibration)`` on the same 150 seeded examples for every cell."""
    from backend.evaluation.runner import DEFAULT_SAMPLE_SEED

    store = ResultsStore(tmp_path / "results.db")
    sweep = sweep_for(study, claim_id, study.claims[claim_id].grid)
    rng = np.random.default_rng(0)
    docs = list(range(0, 300, 2))
    for index, cell in enumerate(sweep_cells(sweep)):
        variant_id = f"v{index}"
        store.record_cell(sweep.name, cell.key, "done", variant_id=variant_id)
        for task in sweep.tasks:
            scores = (rng.random(len(docs)) < accuracy(task, cell.calibration)).astype(float)
            key = ResultKey(sweep.models[0], variant_id, task, sweep.limit, "packaged", "0.4", DEFAULT_SAMPLE_SEED)
            store.put(key, n_examples=len(docs), metrics={"acc,none": float(scores.mean())},
                      outcomes={"acc": dict(zip(docs, scores.tolist(), strict=True))})
    return store


def test_c1_from_a_planted_results_store_is_replicated(tmp_path):
    data = _spec()
    data["claims"]["C1"]["grid"] = {"methods": ["wanda"], "calibrations": ["sst2", "arc_challenge", "boolq"],
                                    "sparsities": ["0.5"], "seqlens": [128], "tasks": ["sst2", "imdb", "copa", "sciq"]}
    study = resolve(parse_study(data), None)
    planted = {"sst2": 0.45, "arc_challenge": 0.6, "boolq": 0.8}

    def accuracy(task, calibration):  # calibration moves sentiment only
        return planted[calibration] if task in ("sst2", "imdb") else 0.6

    store = _planted_store(tmp_path, study, "C1", accuracy)
    evidence = read_evidence(sweep_for(study, "C1", study.claims["C1"].grid), store)
    assert len(evidence.tables("calibration")) == 4
    judgement = judge_c1(evidence, study.claims["C1"], study.settings)
    assert judgement["verdict"] == REPLICATED
    sentiment = next(row for row in judgement["rows"] if row["name"] == "sentiment")
    assert sentiment["p_holm"] < 0.01
    # C4 on the same store: no C4/WikiText2 calibration -> not run, and it says why
    c4 = judge_c4(evidence, study.claims["C1"], study.settings)
    assert c4["verdict"] == NOT_RUN and "C4 or WikiText2" in c4["why"]
