"""The verdict card and its CSV, drawn from a real causal check on the planted tiny case."""

from __future__ import annotations

import contextlib
import csv
import io

import pytest

from backend.nsa.causal import FoldSelection, causal_check, two_folds
from frontend.views import verdict_view
from tests.unit.test_nsa_causal import _planted, _setup


@pytest.fixture(scope="module")
def planted_result() -> dict:
    loaded, width, probes, labels, levels = _setup("llama")
    known = width + levels[1].argsort(descending=True)[:4]
    variant = _planted(loaded, known)
    folds = [FoldSelection(test=fold, selected=known) for fold in two_folds(len(probes), 0)]
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


def _with_held_out(result: dict, excess_values: list[float]) -> dict:
    """The planted result plus a held-out excess drop computed by the NSA statistics' own
    interval and verdict functions from per-text values."""
    from backend.nsa.stats import StatsOptions, interval, verdict

    excess = interval(excess_values, StatsOptions(resamples=1000, seed=0))
    held = {"excess_drop": excess, "verdict": verdict(excess)}
    return {**result, "comparison": [{"variant": "planted-v", "statistics": {"held_out": held}}]}


def test_card_and_csv_never_overstate_a_held_out_excess_whose_interval_holds_zero(planted_result):
    # Per-text excess drops centred on 0: the bootstrap interval holds 0.
    result = _with_held_out(planted_result, [-0.03, 0.02, -0.01, 0.03, 0.0, -0.02, 0.01, 0.015])
    excess = result["comparison"][0]["statistics"]["held_out"]["excess_drop"]
    assert excess["low"] < 0 < excess["high"]
    line = verdict_view.verdict_cards(result)[0]["lines"][-1]
    assert line.startswith("Held-out excess activation drop (NSA statistics): ")
    assert "[95% CI " in line and line.endswith("not distinguishable from the baseline")
    rows = list(csv.DictReader(io.StringIO(verdict_view.verdict_csv(result))))
    assert rows[0]["held_out_verdict"] == "not distinguishable from the baseline"
    assert float(rows[0]["held_out_low"]) == pytest.approx(excess["low"])
    assert float(rows[0]["held_out_high"]) == pytest.approx(excess["high"])
    assert rows[1]["held_out_excess"] == ""  # the dense ablation has no variant, so no excess


def test_card_reads_a_clear_held_out_excess_and_says_when_there_is_none(planted_result):
    result = _with_held_out(planted_result, [0.10, 0.12, 0.09, 0.11, 0.13, 0.08])
    assert verdict_view.verdict_cards(result)[0]["lines"][-1].endswith("larger drop than the baseline")
    assert verdict_view.verdict_cards(planted_result)[0]["lines"][-1].endswith(
        "n/a (no held-out statistics in this result)")


def test_static_card_figure_takes_the_card_dict(planted_result):
    from frontend.views import static_figures
    from tests.unit.test_static_figures import svg_texts

    card = verdict_view.verdict_cards(planted_result)[0]
    drawn = svg_texts(static_figures.figure_bytes(static_figures.verdict_card_static(card), "svg"))
    assert "Patching in planted-v" in drawn and "Recovery of the lost margin" in drawn
    assert "more than random neurons" in drawn  # the backend's reading is the card's verdict line
