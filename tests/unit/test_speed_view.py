"""Accuracy next to speed: the join, the Pareto front and both figures, on hand-made API rows."""

from __future__ import annotations

import math
import random

import pytest

from frontend.views import speed_view
from frontend.views.figures import Z95
from frontend.views.static_figures import figure_bytes


def _evaluation(variant_id, task, acc, stderr, method="wanda", sparsity="0.5", stale=False):
    return {"variant_id": variant_id, "task": task, "stale": stale,
            "metrics": {"acc,none": acc, "acc_stderr,none": stderr},
            "variant": None if variant_id is None else {"method": method, "sparsity": sparsity}}


def _speed(variant_id, speedup, low, high, kind="unstructured", created="2026-12-07T00:00:00", stale=False):
    return {"variant_id": variant_id, "speedup": speedup, "kind": kind, "device": "cpu", "created_at": created,
            "stale": stale, "models": {"variant": {"speedup": speedup, "speedup_range": [low, high]}}}


def test_the_frame_joins_accuracy_and_the_newest_current_speed():
    evaluations = [
        _evaluation(None, "sst2", 0.60, 0.03),
        _evaluation("a", "sst2", 0.55, 0.02), _evaluation("a", "sst2", 0.57, 0.04),  # mean of two
        _evaluation("b", "sst2", 0.50, 0.02, method="random-neurons", sparsity="neurons:0.5"),
        _evaluation("c", "sst2", 0.40, 0.02),  # no speed measured: left out
        _evaluation("b", "rte", 0.90, 0.01),  # another task
        _evaluation("a", "sst2", 0.99, 0.01, stale=True),  # other code's number: left out
    ]
    speeds = [_speed("a", 0.9, 0.8, 1.0, created="2026-12-06"), _speed("a", 1.01, 0.95, 1.1),
              _speed("b", 1.4, 1.3, 1.5, kind="neurons"), _speed("b", 9.0, 9, 9, kind="neurons", stale=True)]
    frame = speed_view.accuracy_speed_frame(evaluations, speeds, "sst2")
    rows = {row.variant_id: row for row in frame.itertuples()}
    assert set(rows) == {"dense", "a", "b"}
    assert rows["a"].accuracy == pytest.approx(0.56) and rows["a"].half_width == pytest.approx(Z95 * 0.03)
    assert (rows["a"].speedup, rows["a"].speedup_low, rows["a"].speedup_high) == (1.01, 0.95, 1.1)
    assert rows["b"].speedup == 1.4 and rows["b"].kind == "neurons"
    assert rows["dense"].speedup == 1.0
    # dense (1.0, .60) and b (1.4, .50) are on the front; a (1.01, .56) too: faster than dense
    assert {row.variant_id for row in frame.itertuples() if row.pareto} == {"dense", "a", "b"}
    assert frame["speedup"].is_monotonic_increasing


def test_pareto_front_is_exactly_the_undominated_points():
    generator = random.Random(0)
    for _ in range(50):
        points = [(generator.choice([0.8, 1.0, 1.2, 1.5]), generator.choice([0.4, 0.5, 0.6]))
                  for _ in range(generator.randint(1, 12))]
        front = speed_view.pareto_front([p[0] for p in points], [p[1] for p in points])
        for (s0, a0), on_front in zip(points, front, strict=True):
            dominated = any(s >= s0 and a >= a0 and (s, a) != (s0, a0) for s, a in points)
            assert on_front == (not dominated)
        assert any(front)


def test_both_figures_draw_the_front():
    frame = speed_view.accuracy_speed_frame(
        [_evaluation(None, "sst2", 0.6, math.nan), _evaluation("a", "sst2", 0.5, 0.02)],
        [_speed("a", 1.3, 1.2, 1.4, kind="neurons")], "sst2")
    plotly_figure = speed_view.accuracy_speed_figure(frame, "sst2")
    assert "Pareto front" in {trace.name for trace in plotly_figure.data}
    svg = figure_bytes(speed_view.accuracy_speed_static(frame, "sst2"), "svg")
    assert b"<svg" in svg and b"Pareto front" in svg
    assert figure_bytes(speed_view.accuracy_speed_static(frame, "sst2"), "pdf").startswith(b"%PDF")
