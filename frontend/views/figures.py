"""Plotly figures of the dashboard, built from plain data (DataFrames of backend JSON).

- ``activation_loss_figure``: where a variant took activation away, layer x neuron.
- ``accuracy_sparsity_figure``: accuracy vs sparsity, one panel per task category.
- ``word_drop_figure``: per-word drops of several variants side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

Z95 = 1.959963984540054  # standard normal 97.5% quantile: a 95% interval is value ± Z95·stderr

# Drop 1 = silenced (red), 0 = untouched (white), negative = fires harder (blue).
DROP_COLORSCALE = [[0.0, "rgb(33,102,172)"], [0.5, "rgb(255,255,255)"], [1.0, "rgb(178,24,43)"]]
DENSE_LABEL = "dense"


def activation_loss_figure(points: pd.DataFrame, title: str = "", *, layers: int | None = None,
                           neurons_per_layer: int | None = None) -> go.Figure:
    """Selected neurons at (neuron index, layer), coloured by their drop, sized by NSA score.

    ``points``: columns layer, neuron, score, drop, layer_baseline, words (``nsa_view.loss_points``).
    ``layers`` / ``neurons_per_layer``: the model's size, so the axes show the whole model.
    """
    drops = points["drop"].astype(float)
    sizes = 8 + 14 * (points["score"].astype(float) / max(float(points["score"].max() or 1.0), 1e-12))
    hover = [
        f"layer {row.layer}, neuron {row.neuron}<br>score {row.score:.3f}<br>"
        f"drop {_percent(row.drop)} (layer baseline {_percent(row.layer_baseline)})<br>{row.words}"
        for row in points.itertuples()
    ]
    figure = go.Figure(go.Scatter(
        x=points["neuron"], y=points["layer"], mode="markers",
        marker={"color": drops.fillna(0.0), "cmin": -1.0, "cmax": 1.0, "colorscale": DROP_COLORSCALE,
                "size": sizes, "line": {"width": 1, "color": "#555"},
                "colorbar": {"title": {"text": "drop"}, "tickformat": ".0%"}},
        text=hover, hoverinfo="text", customdata=points[["layer", "neuron"]].to_numpy(),
    ))
    figure.update_layout(title=title or None, xaxis_title="neuron index", yaxis_title="layer",
                         height=360, margin={"l": 50, "r": 20, "t": 40 if title else 10, "b": 40})
    if layers:
        figure.update_yaxes(range=[layers - 0.5, -0.5])  # layer 0 on top
    else:
        figure.update_yaxes(autorange="reversed")
    if neurons_per_layer:
        figure.update_xaxes(range=[-0.5, neurons_per_layer - 0.5])
    return figure


def _percent(value) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{float(value):.1%}"


def sparsity_value(label) -> tuple[float, bool]:
    """A sparsity label as ``(fraction removed, semi-structured?)``: "0.5" -> (0.5, False), "2:4" -> (0.5, True)."""
    if label is None or label == "" or label == DENSE_LABEL:
        return 0.0, False
    text = str(label).strip()
    if ":" in text:
        kept, _, group = text.partition(":")
        if kept.isdigit() and group.isdigit() and int(group) > 0:
            return 1.0 - int(kept) / int(group), True
    if text.startswith("neurons:"):
        return float(text.split(":", 1)[1]), True
    return float(text), False


def accuracy_by_sparsity(evaluations: Sequence[dict], tasks: Sequence[dict],
                         metric: str = "acc,none") -> pd.DataFrame:
    """Mean accuracy per (category, task, sparsity label) over methods and calibration sets, and
    the half-width of its 95% interval, 1.96 x the mean lm-eval stderr (the tables' rule; NaN
    where a result has no stderr).

    ``evaluations``: rows of ``GET /evaluations`` (``variant`` None for dense); ``tasks``: rows of
    ``GET /tasks`` (name, category_title). Rows without the metric are left out, never taken as 0,
    and so are stale rows (computed by other evaluation code than the server's).
    """
    category = {t["name"]: t.get("category_title") or t.get("category") or "other" for t in tasks}
    rows = []
    for row in evaluations:
        if row.get("stale"):
            continue
        value = (row.get("metrics") or {}).get(metric)
        if not isinstance(value, int | float):
            continue
        variant = row.get("variant") or {}
        label = DENSE_LABEL if not row.get("variant_id") else str(variant.get("sparsity"))
        fraction, structured = sparsity_value(label)
        name, _, filter_name = metric.partition(",")
        stderr = (row.get("metrics") or {}).get(f"{name}_stderr,{filter_name}")
        rows.append({"category": category.get(row["task"], "other"), "task": row["task"],
                     "sparsity": label, "fraction": fraction, "structured": structured,
                     "accuracy": float(value),
                     "half_width": Z95 * float(stderr) if isinstance(stderr, int | float) else math.nan})
    frame = pd.DataFrame(rows, columns=["category", "task", "sparsity", "fraction", "structured", "accuracy",
                                        "half_width"])
    if frame.empty:
        return frame
    return (frame.groupby(["category", "task", "sparsity", "fraction", "structured"], as_index=False)
            [["accuracy", "half_width"]].agg(lambda column: column.mean(skipna=False))
            .sort_values(["category", "task", "fraction", "structured"], ignore_index=True))


def accuracy_sparsity_figure(frame: pd.DataFrame) -> go.Figure:
    """One panel per task category: a line per task over unstructured sparsities (dense at 0),
    semi-structured patterns (2:4 …) as diamonds at their fraction."""
    categories = sorted(frame["category"].unique()) if not frame.empty else []
    figure = make_subplots(rows=1, cols=max(1, len(categories)), shared_yaxes=True,
                           subplot_titles=categories or None)
    palette = qualitative.Plotly
    colors = {task: palette[i % len(palette)] for i, task in enumerate(sorted(frame["task"].unique()))} \
        if not frame.empty else {}
    for column, name in enumerate(categories, start=1):
        in_category = frame[frame["category"] == name]
        for task, rows in in_category.groupby("task"):
            lines = rows[~rows["structured"]].sort_values("fraction")
            figure.add_trace(go.Scatter(x=lines["fraction"], y=lines["accuracy"], mode="lines+markers",
                                        error_y={"type": "data", "array": lines["half_width"]},
                                        name=task, legendgroup=task, line={"color": colors[task]},
                                        hovertemplate=f"{task}<br>sparsity %{{x:.0%}}<br>acc %{{y:.3f}}"),
                             row=1, col=column)
            patterns = rows[rows["structured"]]
            if not patterns.empty:
                figure.add_trace(go.Scatter(
                    x=patterns["fraction"], y=patterns["accuracy"], mode="markers", name=f"{task} N:M",
                    error_y={"type": "data", "array": patterns["half_width"]},
                    legendgroup=task, marker={"symbol": "diamond", "size": 10, "color": colors[task]},
                    text=patterns["sparsity"], hovertemplate=f"{task} %{{text}}<br>acc %{{y:.3f}}"),
                    row=1, col=column)
    figure.update_xaxes(title_text="sparsity", tickformat=".0%")
    figure.update_yaxes(title_text="accuracy", row=1, col=1)
    figure.update_layout(height=380, margin={"l": 50, "r": 20, "t": 40, "b": 40})
    return figure


def word_drop_figure(drops: pd.DataFrame) -> go.Figure:
    """Grouped bars: per influential word, each variant's drop (columns ``drop · <label>``)."""
    figure = go.Figure()
    for column in [c for c in drops.columns if c.startswith("drop · ")]:
        figure.add_trace(go.Bar(x=drops["word"], y=drops[column], name=column.removeprefix("drop · "),
                                hovertemplate="%{x}: %{y:.1%}"))
    figure.update_layout(barmode="group", yaxis_tickformat=".0%", yaxis_title="activation drop",
                         height=320, margin={"l": 50, "r": 20, "t": 20, "b": 40})
    return figure
