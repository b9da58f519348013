"""Accuracy next to speed: what each stored variant costs in accuracy and buys in forward speed.

Pure builders (no Streamlit): ``accuracy_speed_frame`` joins the stored evaluations of one task
with the stored speed measurements (``GET /speed``), ``pareto_front`` marks the variants no other
variant beats on both axes, and the plotly and matplotlib figures draw it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import pandas as pd
import plotly.graph_objects as go
from matplotlib.figure import Figure

from frontend.views.figures import Z95

COLUMNS = ["variant_id", "method", "sparsity", "kind", "accuracy", "half_width", "speedup", "speedup_low",
           "speedup_high", "device", "pareto"]
DENSE_ID = "dense"


def _latest_speeds(speeds: Sequence[dict], device: str | None) -> dict[str, dict]:
    """The newest current measurement per variant (on ``device`` when given)."""
    latest: dict[str, dict] = {}
    for row in sorted(speeds, key=lambda r: r.get("created_at", "")):
        if row.get("stale") or (device is not None and row.get("device") != device):
            continue
        latest[row["variant_id"]] = row
    return latest


def accuracy_speed_frame(evaluations: Sequence[dict], speeds: Sequence[dict], task: str,
                         metric: str = "acc,none", device: str | None = None) -> pd.DataFrame:
    """One row per variant with both an evaluation on ``task`` and a speed measurement, plus the
    dense model (speed-up 1 by definition). Accuracy is the mean over the variant's stored results
    of that task; ``half_width`` its 95% interval from lm-eval's stderr."""
    measured = _latest_speeds(speeds, device)
    name, _, filter_name = metric.partition(",")
    by_variant: dict[str, list[tuple[float, float]]] = {}
    info: dict[str, dict] = {}
    for row in evaluations:
        value = (row.get("metrics") or {}).get(metric)
        if row.get("stale") or row.get("task") != task or not isinstance(value, int | float):
            continue
        variant_id = row.get("variant_id") or DENSE_ID
        if variant_id != DENSE_ID and variant_id not in measured:
            continue
        stderr = (row.get("metrics") or {}).get(f"{name}_stderr,{filter_name}")
        by_variant.setdefault(variant_id, []).append(
            (float(value), Z95 * float(stderr) if isinstance(stderr, int | float) else math.nan))
        info[variant_id] = row.get("variant") or {}
    rows = []
    for variant_id, values in by_variant.items():
        speed = measured.get(variant_id)
        kind: str | None
        device_name: str | None
        if variant_id == DENSE_ID:
            speedup, low, high, kind, device_name = 1.0, 1.0, 1.0, "dense", None
        else:
            assert speed is not None
            low, high = speed["models"]["variant"]["speedup_range"]
            speedup, kind, device_name = float(speed["speedup"]), speed.get("kind"), speed.get("device")
        rows.append({"variant_id": variant_id, "method": info[variant_id].get("method", DENSE_ID),
                     "sparsity": info[variant_id].get("sparsity", DENSE_ID), "kind": kind,
                     "accuracy": sum(v for v, _ in values) / len(values),
                     "half_width": sum(h for _, h in values) / len(values),
                     "speedup": speedup, "speedup_low": low, "speedup_high": high, "device": device_name})
    frame = pd.DataFrame(rows, columns=COLUMNS[:-1])
    frame["pareto"] = pareto_front(frame["speedup"].tolist(), frame["accuracy"].tolist())
    return frame.sort_values("speedup", ignore_index=True)


def pareto_front(speedups: Sequence[float], accuracies: Sequence[float]) -> list[bool]:
    """True for each point that no other point beats on both axes (at least as good on both,
    better on one)."""
    points = list(zip(speedups, accuracies, strict=True))
    return [not any(s >= s0 and a >= a0 and (s > s0 or a > a0) for s, a in points) for s0, a0 in points]


def accuracy_speed_figure(frame: pd.DataFrame, task: str) -> go.Figure:
    figure = go.Figure()
    for kind, rows in frame.groupby("kind"):
        figure.add_trace(go.Scatter(
            x=rows["speedup"], y=rows["accuracy"], mode="markers", name=str(kind),
            error_y={"type": "data", "array": rows["half_width"]},
            error_x={"type": "data", "symmetric": False, "array": rows["speedup_high"] - rows["speedup"],
                     "arrayminus": rows["speedup"] - rows["speedup_low"]},
            text=rows["method"] + " " + rows["sparsity"].astype(str),
            hovertemplate="%{text}<br>speed-up %{x:.2f}x<br>acc %{y:.3f}<extra></extra>"))
    front = frame[frame["pareto"]].sort_values("speedup")
    figure.add_trace(go.Scatter(x=front["speedup"], y=front["accuracy"], mode="lines", name="Pareto front",
                                line={"dash": "dot", "color": "grey"}, hoverinfo="skip"))
    figure.update_xaxes(title_text="forward speed-up vs dense (median of interleaved repeats)")
    figure.update_yaxes(title_text=f"{task} accuracy", tickformat=".0%")
    figure.update_layout(height=380, margin={"l": 50, "r": 20, "t": 30, "b": 40})
    return figure


def accuracy_speed_static(frame: pd.DataFrame, task: str) -> Figure:
    """The same view for papers (SVG/PDF through ``static_figures.figure_bytes``)."""
    figure = Figure(figsize=(5.2, 3.6))
    axes = figure.subplots()
    palette = matplotlib.colormaps["tab10"]
    for index, (kind, rows) in enumerate(frame.groupby("kind")):
        axes.errorbar(rows["speedup"], rows["accuracy"], yerr=rows["half_width"].fillna(0),
                      xerr=[rows["speedup"] - rows["speedup_low"], rows["speedup_high"] - rows["speedup"]],
                      fmt="o", color=palette(index % 10), label=str(kind), capsize=2)
    front = frame[frame["pareto"]].sort_values("speedup")
    axes.plot(front["speedup"], front["accuracy"], linestyle=":", color="grey", label="Pareto front")
    axes.axvline(1.0, color="black", linewidth=0.5)
    axes.set_xlabel("forward speed-up vs dense")
    axes.set_ylabel(f"{task} accuracy")
    axes.yaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    return figure
