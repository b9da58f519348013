"""The study reports page: runs listed with their verdicts, one run's claims, its dense-vs-chance
table and the links behind each verdict, all read over HTTP from the real FastAPI app serving
report folders written by the study code itself (``backend.studies.report.write_report``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from frontend import ui
from frontend.client import BackendClient
from frontend.views import studies_view

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

APP = str(Path(__file__).resolve().parents[2] / "frontend" / "app.py")
SPEC = Path(__file__).resolve().parents[2] / "studies" / "nsa-paper.yaml"
NSA_ID = "a" * 24


def _claim(claim_id: str, verdict: str, **extra) -> dict:
    return {"id": claim_id, "title": f"title {claim_id}", "source": "Table 1", "paper": f"paper {claim_id}",
            "verdict": verdict, "why": f"why {claim_id}", "ours": f"ours {claim_id}",
            "estimate": {"value": 0.031, "low": -0.012, "high": 0.074, "unit": "points"},
            "detectable": {"value": 0.18, "unit": "points"}, "rows": [], "notes": [f"note {claim_id}"],
            "cells": [], "nsa_results": []} | extra


def _report(profile: str, claims: list[dict]) -> tuple:
    from backend.studies.spec import load_study, resolve

    study = resolve(load_study(SPEC), profile)
    chance = [{"task": "sst2", "n": 100, "accuracy": 0.64, "low": 0.542, "high": 0.727, "baseline": 0.52,
               "baseline_kind": "majority label", "gold_shares": {"negative": 0.48, "positive": 0.52},
               "p_value": 0.0104, "status": "informative", "balanced_accuracy": 0.631,
               "prediction_shares": {"negative": 0.26, "positive": 0.74}, "num_fewshot": 0},
              {"task": "copa", "n": 100, "accuracy": 0.53, "low": 0.433, "high": 0.625, "baseline": 0.5,
               "baseline_kind": "random choice", "gold_shares": {"0": 0.55, "1": 0.45}, "p_value": 0.309,
               "status": "uninformative for this model", "num_fewshot": 0}]
    return study, {"study": study.name, "profile": profile, "paper": "", "settings": study.settings.model_dump(),
                   "chance": chance, "claims": claims, "cell_counts": {}, "seconds": 12.5}


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The real API (tiny model) over a cache holding two study report folders."""
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from backend.config import get_settings
    from backend.studies.report import write_report
    from tests.conftest import tiny_loaded

    cache = tmp_path_factory.mktemp("studies-cache")
    runs = {"nsa-paper-quick-a": _report("quick", [_claim("C1", "replicated"),
                                                   _claim("C6", "not distinguishable", nsa_results=[NSA_ID])]),
            "nsa-paper-embedded-b": _report("embedded", [_claim("C3", "not run", estimate=None, detectable=None)])}
    for run, (study, result) in runs.items():
        write_report(result, study, cache / "studies" / run)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELENS_CACHE_DIR", str(cache))
        patch.delenv("PRUNELENS_API_TOKEN", raising=False)
        get_settings.cache_clear()
        app = create_app(ApiSettings(cache_dir=cache), loaded=tiny_loaded("llama"))
        with TestClient(app) as http:
            yield {"api": BackendClient("http://testserver", http=http), "runs": runs}
        get_settings.cache_clear()


@pytest.fixture
def dashboard(backend):
    import streamlit as st

    st.cache_data.clear()
    ui.use_client(backend["api"])
    yield lambda: AppTest.from_file(APP, default_timeout=60)
    ui.use_client(None)


def _open(at: AppTest, **params) -> AppTest:
    at.switch_page("pages/studies.py")
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()



def test_runs_frame_lists_every_claim_any_run_has():
    rows = [{"run": "a", "study": "s", "profile": "quick", "seconds": 3.0, "verdicts": {"C1": "replicated"}},
            {"run": "b", "study": "s", "profile": "7b", "seconds": 9.0, "verdicts": {"C3": "not run"}}]
    frame = studies_view.runs_frame(rows)
    assert list(frame.columns) == ["run", "study", "profile", "seconds", "C1", "C3"]
    assert frame.to_dict("records") == [
        {"run": "a", "study": "s", "profile": "quick", "seconds": 3.0, "C1": "replicated", "C3": ""},
        {"run": "b", "study": "s", "profile": "7b", "seconds": 9.0, "C1": "", "C3": "not run"}]


def test_claims_and_chance_frames_in_points(backend):
    report = backend["runs"]["nsa-paper-quick-a"][1]
    claims = studies_view.claims_frame(report)
    assert claims["verdict"].tolist() == ["replicated", "not distinguishable"]
    assert claims["ours (95% interval)"][0] == "3.1 [-1.2, 7.4] points"
    assert claims["minimum detectable"][0] == "18.0 points"
    chance = studies_view.chance_frame(report).set_index("task")
    assert chance.loc["sst2", "95% interval"] == "[54.2, 72.7]"
    assert chance.loc["copa", "baseline"] == "50.0 (random choice)"
    assert chance.loc["copa", "status"] == "uninformative for this model"
    c6 = report["claims"][1]
    assert studies_view.claim_links(report, c6) == [(f"NSA result {NSA_ID[:12]}", f"./?result={NSA_ID}")]
    [(label, href)] = studies_view.claim_links(report, report["claims"][0])
    assert label == "accuracy table task-calibration"
    assert href == "accuracy?model=smollm2-135m-instruct&kind=task-calibration"


def test_the_page_lists_runs_and_opens_the_run_in_the_url(dashboard, backend):
    at = _open(dashboard(), run="nsa-paper-quick-a")
    assert not at.exception, [e.value for e in at.exception]
    runs = at.dataframe[0].value
    assert sorted(runs["run"]) == ["nsa-paper-embedded-b", "nsa-paper-quick-a"]
    assert runs.set_index("run").loc["nsa-paper-quick-a", "C1"] == "replicated"
    assert at.selectbox(key="st_run").value == "nsa-paper-quick-a"
    assert at.dataframe[1].value["verdict"].tolist() == ["replicated", "not distinguishable"]
    assert at.dataframe[2].value["task"].tolist() == ["sst2", "copa"]
    markdown = " ".join(element.value for element in at.markdown)
    assert "why C1" in markdown and "note C6" in markdown and f"./?result={NSA_ID}" in markdown

    at.selectbox(key="st_run").set_value("nsa-paper-embedded-b").run()  # another run: the URL follows
    assert not at.exception
    assert at.query_params["run"] in ("nsa-paper-embedded-b", ["nsa-paper-embedded-b"])
    assert at.dataframe[1].value["verdict"].tolist() == ["not run"]
