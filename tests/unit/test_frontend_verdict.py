"""The verdict card and its CSV, drawn from a real causal check on the planted tiny case."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest

from backend.nsa.causal import FoldSelection, causal_check, two_fold_split
from frontend.views import verdict_view
from tests.unit.test_nsa_causal import _planted, _setup


@pytest.fixture(scope="module")
def planted_result() -> dict:
    loaded, width, probes, labels, levels = _setup("llama")
    known = width + levels[1].argsort(descending=True)[:4]
    variant = _planted(loaded, known)
    folds = [FoldSelection(test=fold, selected=known) for fold in two_fold_split(len(probes), 0)]
    causal = causal_check(loaded.model, loaded.adapter, probes, labels, folds,
                          variants=[("planted-v", lambda: contextlib.nullcontext(variant))], draws=20)
    return {"causal": causal}


def test_cards_show_recovery_random_and_the_reading(planted_result):
    cards = verdict_view.verdict_cards(planted_result)
    assert [card["title"] for card in cards] == ["Patching in planted-v", "Ablation in the dense model"]
    patch_card = cards[0]
    assert patch_card["lines"][0].startswith("Recovery of the lost margin: 100% [100%, 100%]")
    assert "Matched random neurons: 0%" in patch_card["lines"][1]
    assert "more than random neurons" in patch_card["reading"]
    assert "p-value vs 20 matched random sets: 0.048" in patch_card["lines"][3]


def test_csv_holds_one_row_per_variant_and_the_ablation(planted_result):
    rows = list(csv.DictReader(io.StringIO(verdict_view.verdict_csv(planted_result))))
    assert [row["check"] for row in rows] == ["patching", "ablation"]
    patching = planted_result["causal"]["patching"][0]
    assert float(rows[0]["value"]) == pytest.approx(patching["recovery"]["value"])
    assert float(rows[0]["random"]) == pytest.approx(patching["random"]["value"], abs=1e-12)
    assert rows[0]["reading"] == patching["reading"]
    assert float(rows[1]["p_value"]) == pytest.approx(planted_result["causal"]["ablation"]["p_value"])


def test_no_causal_check_draws_no_card():
    assert verdict_view.verdict_cards({"causal": None}) == []
    assert verdict_view.verdict_csv({}) == ""


def test_an_nsa_job_is_described_by_its_request():
    from frontend.views.jobs_view import describe_job

    job = {"kind": "nsa", "params": {"request": {"texts": ["a", "b", "c"], "variants": ["v"], "patch": True}}}
    assert describe_job(job) == "NSA on 3 texts \u00b7 1 variants \u00b7 patch"
