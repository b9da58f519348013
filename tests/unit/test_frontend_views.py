"""The dashboard's plain builders: heatmap HTML and colours, NSA result readers, tables, figures,
URL state, the HTTP client's error handling, the demo plan and the compose file."""

from __future__ import annotations

import csv
import io
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from frontend.client import (
    BackendClient,
    BackendError,
    BackendUnavailable,
    error_message,
    parse_sse,
)
from frontend.demo import DemoPlan
from frontend.links import ViewState, share_url
from frontend.views import figures, jobs_view, nsa_view, tables
from frontend.views.heatmap import (
    NEGATIVE_RGB,
    POSITIVE_RGB,
    WHITE,
    HeatmapRow,
    diverging_rgb,
    heatmap_document,
    heatmap_html,
    token_drop,
)

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- heatmap


class _Cells(HTMLParser):
    """Collect, per table line, each row's label and its cells (text, style, title)."""

    def __init__(self):
        super().__init__()
        self.lines: list[list[dict]] = []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.lines.append([])
        elif tag == "tr":
            self.lines[-1].append({"label": "", "cells": []})
        elif tag in ("td", "th"):
            self._cell = {"tag": tag, "text": "", **attrs}

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            row = self.lines[-1][-1]
            if self._cell["tag"] == "th":
                row["label"] = self._cell["text"]
            else:
                row["cells"].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def _rgb_of(style: str) -> tuple[int, ...]:
    inside = style.split("background:rgb(")[1].split(")")[0]
    return tuple(int(part) for part in inside.split(","))


def test_diverging_colour_is_white_at_zero_saturated_at_the_scale_and_linear_between():
    assert diverging_rgb(0.0, 2.0) == WHITE
    assert diverging_rgb(2.0, 2.0) == POSITIVE_RGB
    assert diverging_rgb(-2.0, 2.0) == NEGATIVE_RGB
    assert diverging_rgb(5.0, 2.0) == POSITIVE_RGB  # beyond the dense scale: saturated, not rescaled
    quarter = diverging_rgb(-0.5, 2.0)
    assert quarter == tuple(round(w + (n - w) * 0.25) for w, n in zip(WHITE, NEGATIVE_RGB, strict=True))
    assert diverging_rgb(1.0, 0.0) == WHITE and diverging_rgb(float("nan"), 1.0) == WHITE


def test_token_drop_is_relative_loss_of_magnitude():
    assert token_drop(2.0, 0.5) == pytest.approx(0.75)
    assert token_drop(-2.0, 1.0) == pytest.approx(0.5)  # sign flips count by magnitude
    assert token_drop(1.0, 3.0) == pytest.approx(-2.0)  # fires harder: negative drop
    assert token_drop(0.0, 1.0) is None


def test_heatmap_rows_are_aligned_token_by_token_and_coloured_on_the_dense_scale():
    tokens = ["", "The", " <b>movie</b>", " was", "\n", " slow"]
    dense = [9.0, 1.0, -3.0, 0.5, 0.0, 2.0]  # the start token's outlier stays out of the colours
    pruned = [0.0, 0.25, -1.5, 0.5, 0.1, 6.0]
    scale = max(abs(v) for v in dense[1:])
    parser = _Cells()
    parser.feed(heatmap_html(tokens, [HeatmapRow("dense", dense), HeatmapRow("wanda 0.5", pruned)], scale,
                             line_chars=8))
    assert len(parser.lines) > 1  # wrapped into several lines
    seen_tokens = []
    for line in parser.lines:
        dense_row, pruned_row = line
        assert (dense_row["label"], pruned_row["label"]) == ("dense", "wanda 0.5")
        assert [c["text"] for c in dense_row["cells"]] == [c["text"] for c in pruned_row["cells"]]
        seen_tokens += [c["text"] for c in dense_row["cells"]]
        for cell_dense, cell_pruned in zip(dense_row["cells"], pruned_row["cells"], strict=True):
            position = len(seen_tokens) - len(dense_row["cells"]) + dense_row["cells"].index(cell_dense)
            if position == 0:  # the start token: grey, no colour, its value only in the hover
                assert cell_dense.get("class") == "pl-special" and "style" not in cell_dense
                assert "start token" in cell_dense["title"] and "+9" in cell_dense["title"]
                continue
            assert _rgb_of(cell_dense["style"]) == diverging_rgb(dense[position], scale)
            assert _rgb_of(cell_pruned["style"]) == diverging_rgb(pruned[position], scale)
    assert seen_tokens == ["\u2205", "The", " <b>movie</b>", " was", "\u21b5", " slow"]
    titles = [c["title"] for line in parser.lines for c in line[1]["cells"]]
    assert "drop 75.0%" in titles[1] and "+0.25" in titles[1]  # 1 - 0.25 / 1.0
    assert "drop 50.0%" in titles[2]
    assert "drop n/a" in titles[4]
    assert "beyond the dense scale" in titles[5]


def test_heatmap_wraps_between_words_not_inside_them():
    tokens = ["amateur", "ish", "ly", " assembled", "."]
    parser = _Cells()
    parser.feed(heatmap_html(tokens, [HeatmapRow("dense", [1.0] * 5)], 1.0, line_chars=8))
    assert [[c["text"] for c in line[0]["cells"]] for line in parser.lines] == [
        ["amateur", "ish", "ly"], [" assembled", "."]]


def test_heatmap_refuses_rows_of_the_wrong_length():
    with pytest.raises(ValueError, match="3 tokens"):
        heatmap_html(["a", "b", "c"], [HeatmapRow("dense", [1.0, 2.0])], 2.0)


def test_heatmap_document_is_self_contained():
    page = heatmap_document("T <x>", [("Neuron 1", heatmap_html(["hi"], [HeatmapRow("dense", [1.0])], 1.0))])
    assert page.startswith("<!DOCTYPE html>") and "T &lt;x&gt;" in page
    for external in ("src=", "href=", "http://", "https://", "<script", "@import"):
        assert external not in page


# --------------------------------------------------------------------------- NSA results


def _nsa_result() -> dict:
    """A small NSA result written by hand in schema 2.0 (validated against the backend's schema)."""
    tokens = ["", "good", " film", " bad"]
    return {
        "schema_version": "2.0", "kind": "prunelens.nsa",
        "model": {"name": "m", "family": "llama", "layers": 2, "neurons_per_layer": 8},
        "task": "sentiment", "settings": {"top_k": 2},
        "variants": [{"id": "v-a", "base_model": "m", "method": "wanda", "calibration": "c4", "sparsity": "0.5",
                      "achieved_sparsity": 0.5},
                     {"id": "v-b", "base_model": "m", "method": "wanda", "calibration": "sst2", "sparsity": "0.5",
                      "achieved_sparsity": 0.5}],
        "texts": [{"index": 0, "text": "good film bad", "tokens": tokens,
                   "offsets": [[0, 0], [0, 4], [4, 9], [9, 13]], "truncated": False, "label": "positive",
                   "influential": {"source": "model", "words": [
                       {"word": "good", "spans": [[0, 4]], "tokens": [1]},
                       {"word": "bad", "spans": [[10, 13]], "tokens": [3]}],
                       "raw_generation": "[good, bad]", "rejected": [], "missing": []},
                   "eligible_neurons": 10}],
        "neurons": [
            {"rank": 1, "layer": 1, "index": 5, "score": 0.9, "text_scores": [0.9],
             "attributed_words": [{"text": 0, "word": "bad", "activation": 2.0},
                                  {"text": 0, "word": "good", "activation": 1.0}],
             "variants": {"v-a": {"drop_influential": 0.5, "drop_non_influential": 0.1, "layer_baseline": 0.2,
                                  "weights_removed": {"fraction": 0.5, "inputs": 0.5, "output": 0.5}},
                          "v-b": {"drop_influential": -0.1, "drop_non_influential": 0.0, "layer_baseline": 0.0,
                                  "weights_removed": {"fraction": 0.4, "inputs": 0.4, "output": 0.4}}}},
            {"rank": 2, "layer": 0, "index": 3, "score": 0.7, "text_scores": [0.7],
             "attributed_words": [{"text": 0, "word": "good", "activation": 1.5}],
             "variants": {"v-a": {"drop_influential": None, "drop_non_influential": 0.3, "layer_baseline": 0.2,
                                  "weights_removed": {"fraction": 0.6, "inputs": 0.6, "output": 0.6}},
                          "v-b": {"drop_influential": 0.2, "drop_non_influential": 0.2, "layer_baseline": 0.1,
                                  "weights_removed": {"fraction": 0.5, "inputs": 0.5, "output": 0.5}}}},
        ],
        "per_layer_top": [{"layer": 0, "neurons": [{"index": 3, "score": 0.7}]},
                          {"layer": 1, "neurons": [{"index": 5, "score": 0.9}]}],
        "comparison": [
            {"variant": vid, "aggregate": {"drop_influential": d, "baseline_all_neurons": 0.1,
                                           "baseline_non_influential": 0.0, "excess_drop": d - 0.1},
             "texts": [{"text": 0, "drop_influential": d, "baseline_all_neurons": 0.1,
                        "baseline_non_influential": 0.0, "excess_drop": d - 0.1,
                        "words": [{"word": "good", "drop": d, "baseline_all_neurons": 0.1},
                                  {"word": "bad", "drop": d / 2, "baseline_all_neurons": None}],
                        "neurons": []}]}
            for vid, d in (("v-a", 0.4), ("v-b", 0.2))
        ],
        "heatmaps": [{"text": 0, "tokens": tokens, "offsets": [[0, 0], [0, 4], [4, 9], [9, 13]], "neurons": [
            {"layer": 1, "index": 5, "scale": 2.0, "dense": [0.3, 1.0, 0.1, -2.0],
             "variants": {"v-a": [0.3, 0.5, 0.1, -1.0], "v-b": [0.3, 1.2, 0.0, -2.5]}},
            {"layer": 0, "index": 3, "scale": 1.5, "dense": [9.0, 1.5, -0.5, 0.0],
             "variants": {"v-a": [9.0, 0.0, -0.5, 0.0], "v-b": [9.0, 1.0, -0.4, 0.0]}},
        ]}],
        "ablation": None, "warnings": [], "timings": {"total": 1.0},
    }


def test_hand_made_result_follows_the_backend_schema():
    from backend.nsa.schema import validate_result

    validate_result(_nsa_result())
    assert nsa_view.check_schema(_nsa_result()) is None
    assert "not supported" in nsa_view.check_schema({**_nsa_result(), "schema_version": "1.1"})
    assert "not supported" in nsa_view.check_schema({**_nsa_result(), "schema_version": "3.0"})


def test_heatmap_rows_take_dense_first_then_the_chosen_variants_on_the_dense_scale():
    tokens, rows, scale = nsa_view.heatmap_rows(_nsa_result(), 0, 1, 5, ["v-b"])
    assert tokens == ["", "good", " film", " bad"]
    assert [row.label for row in rows] == ["dense", "wanda 0.5 \u00b7 sst2"]
    assert rows[0].values == [0.3, 1.0, 0.1, -2.0] and rows[1].values == [0.3, 1.2, 0.0, -2.5]
    assert scale == 2.0
    assert nsa_view.heatmap_rows(_nsa_result(), 0, 1, 4) is None  # not a selected neuron
    assert nsa_view.heatmap_rows(_nsa_result(), 3, 1, 5) is None  # no such text


def test_neuron_table_follows_rank_and_carries_each_variants_figures():
    table = nsa_view.neuron_table(_nsa_result())
    assert list(table["rank"]) == [1, 2] and list(table["layer"]) == [1, 0]
    assert table.loc[0, "words"] == "bad, good"
    assert table.loc[0, "drop · wanda 0.5 · c4"] == 0.5
    assert table.loc[0, "weights removed · wanda 0.5 · sst2"] == 0.4
    assert pd.isna(table.loc[1, "drop · wanda 0.5 · c4"])  # a missing drop stays missing
    rows = list(csv.DictReader(io.StringIO(nsa_view.result_csv(_nsa_result()))))
    assert [row["neuron"] for row in rows] == ["5", "3"] and rows[0]["drop · wanda 0.5 · c4"] == "0.5"


def test_word_drops_and_loss_points_read_the_comparison():
    drops = nsa_view.word_drops(_nsa_result(), 0)
    assert list(drops["word"]) == ["good", "bad"]
    assert list(drops["drop · wanda 0.5 · c4"]) == [0.4, 0.2]
    assert list(drops["drop · wanda 0.5 · sst2"]) == [0.2, 0.1]
    bars = figures.word_drop_figure(drops)
    assert [(bar.name, list(bar.y)) for bar in bars.data] == [("wanda 0.5 · c4", [0.4, 0.2]),
                                                               ("wanda 0.5 · sst2", [0.2, 0.1])]
    points = nsa_view.loss_points(_nsa_result(), "v-b")
    assert list(zip(points["layer"], points["neuron"], points["drop"], strict=True)) == [(1, 5, -0.1), (0, 3, 0.2)]
    figure = figures.activation_loss_figure(points)
    assert list(figure.data[0].marker.color) == [-0.1, 0.2]
    assert (figure.data[0].marker.cmin, figure.data[0].marker.cmax) == (-1.0, 1.0)


def test_result_heatmap_document_has_every_text_and_neuron():
    page = nsa_view.result_heatmap_document(_nsa_result())
    assert page.count("<h2>") == 2 and "layer 1, neuron 5" in page and "layer 0, neuron 3" in page
    assert page.count('class="pl-line"') == 2 * 1 and "src=" not in page


def test_parse_word_list_trims_and_drops_duplicates():
    assert nsa_view.parse_word_list(" good, Good ,\nbad,, painfully slow ") == ["good", "bad", "painfully slow"]


# --------------------------------------------------------------------------- tables and figures


def _evaluation(task, variant_id, acc, limit=50, sparsity=None):
    return {"base_model": "m", "variant_id": variant_id, "task": task, "limit": limit, "n_examples": limit,
            "metrics": {"acc,none": acc}, "created_at": "",
            "variant": None if variant_id is None else {"method": "wanda", "sparsity": sparsity}}


def test_comparison_frame_shows_intervals_and_says_not_distinguishable():
    difference = {"difference": -0.05, "low": -0.15, "high": 0.05, "p_value": 0.375, "verdict": "not distinguishable"}
    rows = [{"task": "sst2", "n_examples": 20, "variant": 0.70, "variant_interval": [0.49, 0.91], "dense": 0.75,
             "dense_interval": [0.55, 0.95], "difference": difference},
            {"task": "rte", "n_examples": 20, "variant": 0.5, "variant_interval": None, "dense": None,
             "dense_interval": None, "difference": None}]
    frame = tables.comparison_frame(rows).set_index("task")
    assert frame.loc["sst2", "accuracy 95% CI"] == "[0.490, 0.910]"
    assert frame.loc["sst2", "\u0394 accuracy"] == -0.05 and frame.loc["sst2", "verdict"] == "not distinguishable"
    assert frame.loc["sst2", "\u0394 95% CI (paired)"] == "[-0.150, 0.050]"
    assert math.isnan(frame.loc["rte", "dense"]) and frame.loc["rte", "verdict"] == "not paired"
    assert tables.difference_text(difference) == "-0.050 [-0.150, +0.050] p=0.375 \u00b7 not distinguishable"


def test_accuracy_colours_rise_with_the_value_and_skip_missing_cells():
    assert tables.accuracy_css(float("nan"), 0.0, 1.0) == ""
    greens = [tables.accuracy_css(v, 0.2, 0.8) for v in (0.2, 0.5, 0.8)]
    assert greens[0] == "background-color: rgb(255,255,255)"
    r, g, b = tables.HIGH_RGB
    assert greens[2] == f"background-color: rgb({r},{g},{b})"
    r, g, b = tables.WORSE_RGB
    assert tables.difference_css(-0.1, 0.1) == f"background-color: rgb({r},{g},{b})"
    assert tables.difference_css(0.0, 0.1) == "background-color: rgb(255,255,255)"
    frame = pd.DataFrame({"task": ["a", "b"], "x": [0.2, None], "\u0394 x": [-0.1, 0.05]})
    html = tables.style_accuracy(frame, ["x"], ["\u0394 x"]).to_html()
    assert "-0.100" in html and "+0.050" in html


def test_table_frame_reads_the_backends_table_with_missing_cells_missing():
    from backend.evaluation.store import ResultKey, StoredResult
    from backend.evaluation.tables import build_table

    def stored(task, calibration, acc):
        key = ResultKey("m", f"v-{calibration}-{task}-{acc}", task, 50, "packaged", "h")
        return StoredResult(key, 50, {"acc,none": acc}, None, None, "2026-01-01T00:00:00",
                            {"method": "wanda", "calibration": calibration, "sparsity": "0.5", "seqlen": 256,
                             "nsamples": 16, "seed": 0})

    results = [stored("sst2", "c4", 0.6), stored("sst2", "c4", 0.8), stored("rte", "sst2", 0.5)]
    payload = build_table("task-calibration", results).to_json()
    frame = tables.table_frame(payload).set_index(payload["row_header"])
    assert frame.loc["sst2", "c4"] == pytest.approx(0.7)  # mean of the two c4 results
    assert frame.loc["rte", "sst2"] == 0.5
    assert math.isnan(frame.loc["rte", "c4"]) and math.isnan(frame.loc["sst2", "sst2"])  # missing, not 0
    assert tables.cell_counts(payload).set_index(payload["row_header"]).loc["sst2", "c4"] == 2
    assert tables.interval_frame(payload).set_index(payload["row_header"]).loc["sst2", "c4"] == ""  # no stderr
    long = tables.long_frame(payload)
    assert len(long) == 2 and set(long["column"]) == {"c4", "sst2"}  # missing cells have no line


def test_accuracy_by_sparsity_averages_over_methods_and_puts_dense_at_zero():
    rows = [_evaluation("sst2", None, 0.8), _evaluation("sst2", "v1", 0.6, sparsity="0.5"),
            _evaluation("sst2", "v2", 0.7, sparsity="0.5"), _evaluation("sst2", "v3", 0.5, sparsity="2:4"),
            _evaluation("copa", "v1", 0.55, sparsity="0.5"),
            {**_evaluation("copa", None, 0.0), "metrics": {}},  # no metric: left out, not a zero
            {**_evaluation("sst2", "v1", 0.1, sparsity="0.5"), "stale": True}]  # other code: left out
    tasks = [{"name": "sst2", "category_title": "Sentiment"}, {"name": "copa", "category_title": "Reasoning"}]
    frame = figures.accuracy_by_sparsity(rows, tasks)
    sst2 = frame[frame["task"] == "sst2"].set_index("sparsity")["accuracy"]
    assert sst2["dense"] == 0.8 and sst2["0.5"] == pytest.approx(0.65) and sst2["2:4"] == 0.5
    assert math.isnan(frame["half_width"].iloc[0])  # no stderr, no error bar
    rows = [{**row, "metrics": {**row["metrics"], "acc_stderr,none": 0.05}} for row in rows[:3]]
    with_bars = figures.accuracy_by_sparsity(rows, tasks).set_index("sparsity")["half_width"]
    assert with_bars["0.5"] == pytest.approx(1.959964 * 0.05)
    assert len(frame[frame["task"] == "copa"]) == 1
    figure = figures.accuracy_sparsity_figure(frame)
    names = [trace.name for trace in figure.data]
    assert names.count("sst2") == 1 and "sst2 N:M" in names and "copa" in names
    traces = {trace.name: trace for trace in figure.data}
    assert traces["sst2"].line.color == traces["sst2 N:M"].marker.color  # one colour per task
    assert [a.text for a in figure.layout.annotations] == ["Reasoning", "Sentiment"]


def test_sparsity_labels():
    assert figures.sparsity_value("2:4") == (0.5, True)
    assert figures.sparsity_value("4:8") == (0.5, True)
    assert figures.sparsity_value("0.7") == (0.7, False)
    assert figures.sparsity_value("dense") == (0.0, False)


# --------------------------------------------------------------------------- jobs, links


def test_calibration_groups_keep_variants_that_differ_only_in_calibration_together():
    variants = [
        {"id": "a", "method": "wanda", "sparsity": "0.5", "calibration": "sst2", "nsamples": 16, "seqlen": 256,
         "seed": 0},
        {"id": "b", "method": "wanda", "sparsity": "0.5", "calibration": "c4", "nsamples": 16, "seqlen": 256,
         "seed": 0},
        {"id": "c", "method": "wanda", "sparsity": "0.5", "calibration": "c4", "nsamples": 128, "seqlen": 256,
         "seed": 0},
        {"id": "d", "method": "ria", "sparsity": "2:4", "calibration": "c4", "nsamples": 16, "seqlen": 256,
         "seed": 0},
    ]
    groups = jobs_view.calibration_groups(variants)
    assert [v["id"] for v in groups[("wanda", "0.5", 16, 256, 0)]] == ["b", "a"]  # sorted by calibration
    assert len(groups) == 3
    assert jobs_view.describe_job({"kind": "evaluate", "params": {"variant": None, "tasks": ["sst2"], "limit": 5}}) \
        == "evaluate dense on sst2, limit 5"
    depth = {"method": "shortgpt", "sparsity": None, "calibration": "c4", "nsamples": 2, "seqlen": 16}
    assert jobs_view.describe_job({"kind": "prune", "params": {**depth, "options": {"drop_blocks": 4}}}) \
        == "prune shortgpt blocks:4 \u00b7 c4 (2 x 16)"
    assert jobs_view.describe_job({"kind": "prune", "params": {**depth, "options": {}}}).startswith(
        "prune shortgpt blocks:1 ")
    done = {"id": "j1", "kind": "prune", "state": "succeeded", "progress": 1.0, "message": "done",
            "params": {"method": "ria", "sparsity": "2:4", "calibration": "c4", "nsamples": 16, "seqlen": 256},
            "result": {"variant_id": "ria-c4-2of4-x"}, "error": None}
    failed = {**done, "id": "j2", "state": "failed", "result": None, "error": "c4 needs the hub"}
    frame = jobs_view.jobs_frame([done, failed])
    assert list(frame["produced"]) == ["ria-c4-2of4-x", ""]
    assert list(frame["message"]) == ["done", "c4 needs the hub"]  # the error wins over the message
    assert frame.loc[0, "job"] == "prune ria 2:4 \u00b7 c4 (16 x 256)"
    assert jobs_view.any_active([failed]) is False and jobs_view.any_active([{**done, "state": "queued"}])


def test_view_state_round_trips_through_the_url_and_drops_malformed_values():
    view = ViewState(model="smollm2-135m-instruct", variants=("v-a", "v-b"), result="ab12", text=1, layer=3, neuron=77)
    assert ViewState.from_params(view.to_params()) == view
    parsed = ViewState.from_params({"layer": "x", "neuron": "-4", "variants": ["a,b", "a", ""], "result": "  "})
    assert parsed.layer is None and parsed.neuron is None and parsed.variants == ("a", "b") and parsed.result is None
    assert share_url("http://h:8501/", "explorer", ViewState(result="r1", layer=2)) == \
        "http://h:8501/?result=r1&layer=2"  # the explorer is the default page, served at the root
    assert share_url("http://h:8501/attribute?result=x", "calibration", ViewState(method="ria")) == \
        "http://h:8501/calibration?method=ria"
    assert share_url("http://h/prunelens/jobs", "attribute", ViewState()) == "http://h/prunelens/attribute"


# --------------------------------------------------------------------------- client


def _client(handler) -> BackendClient:
    return BackendClient("http://backend", token="s3cret",
                         http=httpx.Client(base_url="http://backend", transport=httpx.MockTransport(handler)))


def test_client_sends_the_token_encodes_ids_and_turns_errors_into_messages():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen["auth"] = request.headers.get("authorization")
        seen["path"] = request.url.raw_path.decode()
        if request.url.path.startswith("/jobs"):
            return httpx.Response(429, json={"detail": "busy: 4 heavy requests wait"}, headers={"Retry-After": "7"})
        return httpx.Response(404, json={"detail": "unknown variant '../x'"})

    api = _client(handler)
    with pytest.raises(BackendError) as caught:
        api.variant("../x")
    assert str(caught.value) == "unknown variant '../x'" and caught.value.status == 404
    assert seen == {"auth": "Bearer s3cret", "path": "/variants/..%2Fx"}
    with pytest.raises(BackendError) as caught:
        api.job("abc")
    assert caught.value.status == 429 and caught.value.retry_after == 7.0


def test_client_reports_an_unreachable_backend_in_one_line():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(BackendUnavailable, match="cannot reach the backend at http://backend"):
        _client(handler).health()


def test_error_message_flattens_validation_lists():
    payload = {"detail": [{"loc": ["body", "text"], "msg": "text is empty"}, {"loc": ["query", "n"], "msg": "bad"}]}
    assert error_message(payload, 422) == "text: text is empty; n: bad"
    assert error_message(None, 500) == "HTTP 500"


def test_parse_sse_yields_each_events_json():
    lines = ["event: job", "id: 1", 'data: {"state": "running", "progress": 0.5}', "", ": keep-alive", "",
             "event: job", 'data: {"state": "succeeded",', 'data: "progress": 1.0}', ""]
    assert list(parse_sse(lines)) == [{"state": "running", "progress": 0.5}, {"state": "succeeded", "progress": 1.0}]


# --------------------------------------------------------------------------- demo and deployment


def test_demo_plan_covers_three_methods_two_sparsities_two_calibrations_and_four_tasks():
    plan = DemoPlan()
    prunes = plan.prune_requests()
    assert len(prunes) == 12
    assert {(p["method"], p["sparsity"], p["calibration"]) for p in prunes} == {
        (m, s, c) for m in ("wanda", "sparsegpt", "ria") for s in ("0.5", "2:4") for c in ("lambada", "sst2")}
    assert all(p["nsamples"] == 16 and p["seqlen"] == 256 for p in prunes)
    ids = {"wanda": ["w1", "w2", "w3", "w4"], "ria": [f"r{i}" for i in range(10)]}
    nsa = plan.nsa_requests(["a", "b"], ids)
    assert nsa[0]["variants"] == [] and [len(r["variants"]) for r in nsa[1:]] == [4, 8, 2]  # API takes <= 8
    evaluations = plan.evaluation_requests(["w1", "w2"])
    assert [e["variant"] for e in evaluations] == [None, "w1", "w2"]
    assert all(len(e["tasks"]) >= 4 and e["limit"] == 50 for e in evaluations)
    index = plan.index_request(["w1", "w2", "w3"], "cpu")
    assert index["variants"] == ["w1", "w2"] and index["tokens"] == 20_000  # dense + 2 variants, small on CPU
    assert plan.index_request(["w1"], "cuda:0")["tokens"] == 50_000


def test_compose_file_runs_a_gpu_backend_with_token_volume_and_healthcheck_and_a_frontend():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    backend, frontend = compose["services"]["backend"], compose["services"]["frontend"]
    devices = backend["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "PRUNELENS_API_TOKEN" in backend["environment"]
    cache = backend["environment"]["PRUNELENS_CACHE_DIR"]
    assert any(volume.split(":")[1] == cache and "models_cache" in volume.split(":")[0]
               for volume in backend["volumes"])
    assert "/health" in " ".join(backend["healthcheck"]["test"])
    assert [port.rsplit(":", 2)[-1] for port in backend["ports"]] == ["8000"]
    assert [port.rsplit(":", 2)[-1] for port in frontend["ports"]] == ["8501"]
    assert frontend["environment"]["BACKEND_URL"] == "http://backend:8000"
    assert frontend["depends_on"]["backend"]["condition"] == "service_healthy"
    assert "0.0.0.0" in backend["command"]  # reachable from the frontend container, hence the token
    stages = {line.split()[-1] for line in (REPO / "Dockerfile").read_text().splitlines()
              if line.startswith("FROM ") and " AS " in line}
    assert backend["build"]["target"] in stages and frontend["build"]["target"] in stages


def test_the_dashboard_imports_neither_torch_nor_the_backend():
    probe = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'backend'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import frontend.client, frontend.links, frontend.ui, frontend.demo\n"
        "import frontend.views.heatmap, frontend.views.nsa_view, frontend.views.figures\n"
        "import frontend.views.tables, frontend.views.jobs_view, frontend.views.display\n"
        "import frontend.views.static_figures, frontend.views.neuron_view, frontend.views.changed_view\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], check=False, cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_every_page_is_a_registered_page_of_the_app():
    app = (REPO / "frontend" / "app.py").read_text()
    pages = sorted(p.name for p in (REPO / "frontend" / "pages").glob("*.py"))
    assert pages == ["accuracy.py", "attribute.py", "calibration.py", "changed.py", "explorer.py", "jobs.py",
                     "neuron.py", "studies.py"]
    for page in pages:
        assert f'"pages" / "{page}"' in app


def test_demo_waits_out_a_busy_backend_and_records_refusals():
    """429/503 are retried after Retry-After; another refusal is a recorded failure, not a crash."""
    from frontend.client import BackendError
    from frontend.demo import DemoPlan, DemoPreparation

    class Backend:
        def __init__(self, answers):
            self.answers, self.calls = list(answers), 0

        def nsa(self, request):
            self.calls += 1
            answer = self.answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    said: list[str] = []
    busy_then_ok = Backend([BackendError("busy", 429, 0.0), BackendError("full", 503, 0.0), {"id": "r1"}])
    demo = DemoPreparation(api=busy_then_ok, plan=DemoPlan(), texts=lambda n: [], say=said.append)
    assert demo._nsa("dense", {"text": "x"}) == "r1"
    assert busy_then_ok.calls == 3 and demo.failures == []

    refused = Backend([BackendError("empty text", 400)])
    demo = DemoPreparation(api=refused, plan=DemoPlan(), texts=lambda n: [], say=said.append)
    assert demo._nsa("dense", {"text": ""}) is None
    assert refused.calls == 1 and demo.failures == ["dense: empty text"]
    assert said[-1] == "[demo] dense: NSA refused (empty text)"
