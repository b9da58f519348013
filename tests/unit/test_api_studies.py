"""/studies over HTTP (in-process TestClient): bad specs are 4xx with one line and queue no job;
a report folder written by the study code is listed and read back."""

from __future__ import annotations

from pathlib import Path

import yaml

from backend.studies.report import write_report
from backend.studies.spec import load_study, resolve
from tests.unit.test_api import client, make_client  # noqa: F401 - fixtures

SPEC = Path(__file__).resolve().parents[2] / "studies" / "nsa-paper.yaml"


def test_bad_study_requests_are_4xx_with_one_line_and_queue_nothing(client):  # noqa: F811
    text = SPEC.read_text(encoding="utf-8")
    cases = [
        ({"spec": text, "profile": "nope"}, "no profile 'nope'"),
        ({"spec": "name: x\nclaims: [unclosed\n"}, "malformed YAML"),
        ({"spec": text.replace("tasks: [sst2, imdb, yelp", "tasks: [nosuch, imdb, yelp")}, "unknown task 'nosuch'"),
        ({"spec": yaml.safe_dump({"name": "x", "claims": {"C7": {}}})}, "unknown claim 'C7'"),
    ]
    for body, message in cases:
        response = client.post("/studies", json=body)
        assert 400 <= response.status_code < 500, response.text
        detail = response.json()["detail"]
        assert message in str(detail) and "\n" not in str(detail)
    assert client.get("/jobs").json() == [] or all(job["kind"] != "study" for job in client.get("/jobs").json())


def test_reports_are_listed_and_read(client, isolated_cache):  # noqa: F811
    study = resolve(load_study(SPEC), "quick")
    claims = [{"id": "C1", "title": "t", "source": "s", "paper": "p", "verdict": "not distinguishable", "why": "w",
               "ours": "o", "estimate": {"value": 0.01, "low": -0.02, "high": 0.05, "unit": "sd"},
               "detectable": {"value": 0.2, "unit": "points", "note": "n"}, "rows": [], "notes": [], "cells": [],
               "nsa_results": []}]
    result = {"study": study.name, "profile": "quick", "paper": "", "settings": study.settings.model_dump(),
              "chance": [], "claims": claims, "cell_counts": {}, "seconds": 1.5}
    write_report(result, study, isolated_cache.cache_dir / "studies" / "nsa-paper-quick-test")
    listed = client.get("/studies").json()
    assert [row["run"] for row in listed] == ["nsa-paper-quick-test"]
    assert listed[0]["verdicts"] == {"C1": "not distinguishable"}
    assert client.get("/studies/nsa-paper-quick-test").json()["claims"][0]["why"] == "w"
    assert client.get("/studies/nosuchrun").status_code == 404
    folder = isolated_cache.cache_dir / "studies" / "nsa-paper-quick-test"
    assert sorted(p.name for p in folder.iterdir()) == ["cells.csv", "config.yaml", "report.html", "report.md",
                                                        "study.json", "tests.csv", "version.json"]
    assert "<table>" in (folder / "report.html").read_text() and "| C1 |" in (folder / "report.md").read_text()
