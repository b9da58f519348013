"""Accuracy tables: the backend's table payloads as DataFrames, colour scales, dense differences.

Missing cells stay missing (NaN, drawn blank), never 0: an absent evaluation is not a zero
accuracy. Colours are computed here (no matplotlib): accuracies on a white-to-green scale
over the table's own range, differences to dense on a diverging red (worse) / blue (better)
scale symmetric around 0.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence

import pandas as pd
from pandas.io.formats.style import Styler

LOW_RGB = (255, 255, 255)
HIGH_RGB = (49, 163, 84)  # green: higher accuracy
WORSE_RGB = (214, 96, 77)
BETTER_RGB = (67, 147, 195)


def _mix(start: tuple[int, int, int], end: tuple[int, int, int], weight: float) -> str:
    weight = max(0.0, min(1.0, weight))
    r, g, b = (round(s + (e - s) * weight) for s, e in zip(start, end, strict=True))
    return f"background-color: rgb({r},{g},{b})"


def accuracy_css(value, low: float, high: float) -> str:
    """Cell style of an accuracy on the table's range [low, high]; empty for missing cells."""
    if value is None or not isinstance(value, int | float) or math.isnan(value):
        return ""
    if high <= low:
        return _mix(LOW_RGB, HIGH_RGB, 0.5)
    return _mix(LOW_RGB, HIGH_RGB, (value - low) / (high - low))


def difference_css(value, span: float) -> str:
    """Cell style of an accuracy difference to dense: red below 0, blue above, white at 0."""
    if value is None or not isinstance(value, int | float) or math.isnan(value) or span <= 0:
        return ""
    return _mix(LOW_RGB, WORSE_RGB if value < 0 else BETTER_RGB, abs(value) / span)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]


def style_accuracy(frame: pd.DataFrame, columns: Sequence[str] | None = None,
                   difference_columns: Sequence[str] = ()) -> Styler:
    """Colour-scale ``columns`` (default: every numeric column not in ``difference_columns``)."""
    differences = [c for c in difference_columns if c in frame.columns]
    values = [c for c in (columns if columns is not None else numeric_columns(frame)) if c not in differences]
    styler = frame.style.format(precision=3, na_rep="")
    if values:
        cells = frame[values].to_numpy(dtype=float, na_value=math.nan).ravel()
        present = [v for v in cells if not math.isnan(v)]
        low, high = (min(present), max(present)) if present else (0.0, 1.0)
        styler = styler.map(lambda v: accuracy_css(v, low, high), subset=values)
    if differences:
        cells = frame[differences].to_numpy(dtype=float, na_value=math.nan).ravel()
        span = max((abs(v) for v in cells if not math.isnan(v)), default=0.0)
        styler = styler.map(lambda v: difference_css(v, span), subset=differences)
        styler = styler.format("{:+.3f}", subset=differences, na_rep="")
    return styler


def table_frame(payload: dict) -> pd.DataFrame:
    """A ``GET /tables/{kind}`` payload as a DataFrame: the row labels first, one column per column
    label. Payload: ``{"row_header", "columns", "rows": [{"label", "values": [v | null, ...]}]}``."""
    header = payload.get("row_header") or "row"
    columns = [str(column) for column in payload.get("columns", [])]
    records = [[row["label"], *row["values"]] for row in payload.get("rows", [])]
    return _numeric_cells(pd.DataFrame(records, columns=[header, *columns]))


def cell_counts(payload: dict) -> pd.DataFrame:
    """How many stored results each cell averages (same shape as ``table_frame``)."""
    header = payload.get("row_header") or "row"
    columns = [str(column) for column in payload.get("columns", [])]
    records = [[row["label"], *row.get("counts", [None] * len(columns))] for row in payload.get("rows", [])]
    return pd.DataFrame(records, columns=[header, *columns])


def _numeric_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns of numbers and nulls become float (null -> NaN), so they sort and colour as numbers."""
    for column in frame.columns:
        present = frame[column].dropna()
        if frame[column].dtype == object and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in present):
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    return frame


def csv_text(frame: pd.DataFrame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def _metric(row: dict, metric: str) -> float | None:
    value = (row.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def accuracy_vs_dense(evaluations: Sequence[dict], variants: Sequence[tuple[str, str]],
                      metric: str = "acc,none") -> pd.DataFrame:
    """Per task: the dense accuracy, then per variant ``(id, label)`` its accuracy and Δ to dense.

    Dense and variant are only compared at the same example limit: per task the limit with the
    most stored rows among these models is used (ties: the larger limit; None = whole split).
    """
    wanted = {vid for vid, _ in variants}
    relevant = [r for r in evaluations if (r.get("variant_id") or None) in wanted | {None}
                and _metric(r, metric) is not None]
    tasks = sorted({r["task"] for r in relevant})
    rows = []
    for task in tasks:
        in_task = [r for r in relevant if r["task"] == task]
        counts = Counter(r.get("limit") for r in in_task)
        limit = max(counts, key=lambda lim: (counts[lim], math.inf if lim is None else lim))
        at_limit = {(r.get("variant_id") or None): _metric(r, metric) for r in in_task if r.get("limit") == limit}
        dense = at_limit.get(None)
        row = {"task": task, "limit": "all" if limit is None else limit, "dense": dense}
        for vid, label in variants:
            value = at_limit.get(vid)
            row[label] = value
            row[f"\u0394 {label}"] = None if value is None or dense is None else value - dense
        rows.append(row)
    columns = ["task", "limit", "dense"]
    for _, label in variants:
        columns += [label, f"\u0394 {label}"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns[2:]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)  # None -> NaN
    return frame
