"""Read the statistics of an NSA result (held-out and in-sample figures, intervals, matched null).

The headline of a variant is its held-out excess drop (neurons selected on one half of the
texts, measured on the other) with its 95% interval and where it sits in the matched null;
the in-sample figure is shown next to it, labelled as such, because selecting and measuring
on the same texts inflates it. An excess whose interval contains 0 reads "not distinguishable
from the baseline". Plain functions of the result dict: no Streamlit, no HTTP.
"""

from __future__ import annotations

import csv
import io

import pandas as pd

from frontend.views.nsa_view import variant_labels

FIGURES = {
    "drop_influential": "drop (influential tokens)",
    "baseline_all_neurons": "baseline: all neurons of the layers",
    "baseline_non_influential": "baseline: other tokens",
    "excess_drop": "excess drop",
}
SCOPES = {"held_out": "held-out", "in_sample": "in-sample"}
NO_STATISTICS = "no statistics in this result (computed without intervals)"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"


def interval_text(figure: dict) -> str:
    """``+3.4% [95% CI +1.0%, +5.9%]``, or the bare mean when there is no interval."""
    if figure.get("low") is None:
        return percent(figure.get("mean"))
    return f"{percent(figure['mean'])} [95% CI {percent(figure['low'])}, {percent(figure['high'])}]"


def null_text(null: dict | None) -> str:
    if not null:
        return ""
    return (f"matched null of {null['draws']} random sets: {percent(null['mean'])} "
            f"[{percent(null['low'])}, {percent(null['high'])}], observed at percentile "
            f"{null['percentile']:.0f} (p = {null['p_value']:.3f})")


def headline_lines(result: dict) -> list[str]:
    """Markdown lines, one block per variant: the held-out headline first, the in-sample value
    labelled as such, and why a held-out figure is missing when it is."""
    labels = variant_labels(result)
    lines = []
    for comparison in result.get("comparison", []):
        label = labels.get(comparison["variant"], comparison["variant"])
        statistics = comparison.get("statistics")
        if not statistics:
            lines.append(f"**{label}**: {NO_STATISTICS}")
            continue
        held, inside = statistics.get("held_out"), statistics["in_sample"]
        if held is not None:
            lines.append(f"**{label}** \u00b7 held-out excess drop **{interval_text(held['excess_drop'])}** "
                         f"\u2014 {held['verdict']}. {null_text(held['null'])}")
        else:
            lines.append(f"**{label}** \u00b7 {statistics.get('held_out_note') or 'no held-out figure'}")
        lines.append(f"In-sample (neurons selected and measured on the same texts, inflated by selection): "
                     f"excess drop {interval_text(inside['excess_drop'])} \u2014 {inside['verdict']}. "
                     f"{null_text(inside['null'])}")
    return lines


def statistics_table(result: dict) -> pd.DataFrame:
    """One row per variant, scope (held-out, in-sample) and figure: mean, interval, verdict, null."""
    labels = variant_labels(result)
    rows = []
    for comparison in result.get("comparison", []):
        statistics = comparison.get("statistics") or {}
        for scope, scope_label in SCOPES.items():
            summary = statistics.get(scope)
            if not summary:
                continue
            for figure, figure_label in FIGURES.items():
                value = summary[figure]
                is_excess = figure == "excess_drop"
                null = summary.get("null") if is_excess else None
                rows.append({
                    "variant": labels.get(comparison["variant"], comparison["variant"]),
                    "scope": scope_label, "figure": figure_label, "mean": value["mean"],
                    "95% low": value["low"], "95% high": value["high"], "texts": value["n"],
                    "verdict": summary["verdict"] if is_excess else None,
                    "null percentile": None if null is None else null["percentile"],
                    "null p": None if null is None else null["p_value"],
                })
    return pd.DataFrame(rows, columns=["variant", "scope", "figure", "mean", "95% low", "95% high", "texts",
                                       "verdict", "null percentile", "null p"])


def word_statistics_table(result: dict) -> pd.DataFrame:
    """Per variant and influential word (over the texts holding it): drop, baseline, excess with intervals."""
    labels = variant_labels(result)
    rows = []
    for comparison in result.get("comparison", []):
        words = (comparison.get("statistics") or {}).get("words") or {}
        for scope, scope_label in SCOPES.items():
            for row in words.get(scope) or []:
                rows.append({
                    "variant": labels.get(comparison["variant"], comparison["variant"]), "scope": scope_label,
                    "word": row["word"], "texts": len(row["texts"]),
                    "drop": interval_text(row["drop"]), "baseline": interval_text(row["baseline_all_neurons"]),
                    "excess": interval_text(row["excess_drop"]), "verdict": row["verdict"],
                })
    return pd.DataFrame(rows, columns=["variant", "scope", "word", "texts", "drop", "baseline", "excess",
                                       "verdict"])


def statistics_csv(result: dict) -> str:
    """The statistics table as CSV (figures as fractions, intervals in their own columns)."""
    buffer = io.StringIO()
    statistics_table(result).to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()
