"""Accuracy tables: the backend's table payloads as DataFrames, colour scales, dense differences.

Missing cells stay missing (NaN, drawn blank), never 0: an absent evaluation is not a zero
accuracy. Colours are computed here (no matplotlib): accuracies on a white-to-green scale
over the table's own range, differences to dense on a diverging red (worse) / blue (better)
scale symmetric around 0.
"""

from __future__ import annotations

import io
import math
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


def interval_text(interval: Sequence[float] | None) -> str:
    """``[0.541, 0.684]``; empty when there is none."""
    return "" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}]"


def difference_text(difference: dict | None) -> str:
    """``-0.031 [-0.062, +0.001] p=0.081 · not distinguishable``; empty when not paired."""
    if not difference:
        return ""
    return (f"{difference['difference']:+.3f} [{difference['low']:+.3f}, {difference['high']:+.3f}] "
            f"p={difference['p_value']:.3g} \u00b7 {difference['verdict']}")


def _cell_frame(payload: dict, field: str, text) -> pd.DataFrame:
    header = payload.get("row_header") or "row"
    columns = [str(column) for column in payload.get("columns", [])]
    records = [[row["label"], *(text(cell) for cell in (row.get(field) or [None] * len(columns)))]
               for row in payload.get("rows", [])]
    return pd.DataFrame(records, columns=[header, *columns])


def interval_frame(payload: dict) -> pd.DataFrame:
    """Each cell's 95% interval as text (same shape as ``table_frame``)."""
    return _cell_frame(payload, "intervals", interval_text)


def difference_frame(payload: dict) -> pd.DataFrame:
    """Each cell's paired difference to dense as text (same shape as ``table_frame``)."""
    return _cell_frame(payload, "differences", difference_text)


def long_frame(payload: dict) -> pd.DataFrame:
    """One line per cell with its value, interval and paired difference to dense: the CSV download."""
    records = []
    for row in payload.get("rows", []):
        cells = zip(payload.get("columns", []), row["values"], row.get("counts") or [],
                    row.get("intervals") or [], row.get("differences") or [], strict=False)
        for column, value, count, interval, difference in cells:
            if value is None:
                continue
            difference = difference or {}
            records.append({payload.get("row_header") or "row": row["label"], "column": column, "value": value,
                            "low": (interval or [None, None])[0], "high": (interval or [None, None])[1],
                            "results": count, "diff to dense": difference.get("difference"),
                            "diff low": difference.get("low"), "diff high": difference.get("high"),
                            "diff p": difference.get("p_value"), "diff test": difference.get("test"),
                            "diff verdict": difference.get("verdict")})
    return pd.DataFrame(records)


def comparison_frame(rows: Sequence[dict], label: str = "accuracy") -> pd.DataFrame:
    """``GET /evaluations/compare`` rows as a table: per task the dense value and the variant's
    (``label``), each with its 95% interval, and their paired difference on the same examples."""
    records = []
    for row in rows:
        difference = row.get("difference") or {}
        records.append({
            "task": row["task"], "examples": row["n_examples"], "dense": row.get("dense"),
            "dense 95% CI": interval_text(row.get("dense_interval")), label: row["variant"],
            f"{label} 95% CI": interval_text(row.get("variant_interval")),
            f"\u0394 {label}": difference.get("difference"),
            "\u0394 95% CI (paired)": interval_text([difference["low"], difference["high"]]) if difference else "",
            "p": difference.get("p_value"), "verdict": difference.get("verdict", "not paired"),
        })
    columns = ["task", "examples", "dense", "dense 95% CI", label, f"{label} 95% CI", f"\u0394 {label}",
               "\u0394 95% CI (paired)", "p", "verdict"]
    frame = pd.DataFrame(records, columns=columns)
    for column in ("dense", label, f"\u0394 {label}", "p"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)  # None -> NaN
    return frame
