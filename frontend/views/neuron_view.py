"""Draw a neuron page (``GET /neurons/...``): top examples, re-read examples, histograms, change
figures against their split-half floors, logit effects, text tests, NSA selections.

Plain functions of the JSON the backend returned (docs/neurons.md): HTML fragments, plotly
figures and pandas tables. No Streamlit, no HTTP. Every colour of a page is on ONE scale, fixed by
the dense model (its largest |activation| over the corpus), so that a paler variant example really
fired less; it is never re-normalised.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from frontend.views.heatmap import (
    HeatmapRow,
    css_rgb,
    display_token,
    diverging_rgb,
    heatmap_html,
    legend_html,
)

NOISE_LABEL = "not distinguishable from corpus noise"
EXAMPLES_CSS = """
.pl-examples { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
.pl-example { margin: 0 0 6px 0; line-height: 1.9; }
.pl-example .pl-meta { font-family: system-ui, sans-serif; font-size: 11px; color: #666; margin-right: 6px; }
.pl-example span.pl-tok { white-space: pre; padding: 1px 1px; border-radius: 3px; }
.pl-example span.pl-focus { outline: 2px solid #111; }
"""


def dense_scale(page: dict) -> float:
    """The page's one colour scale: the dense model's largest |activation| over the corpus."""
    stats = (page.get("dense") or {}).get("stats") or {}
    values = [abs(float(stats[key])) for key in ("max", "min") if stats.get(key) is not None]
    scale = max(values, default=0.0)
    return scale if math.isfinite(scale) and scale > 0 else 1.0


def _number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:+.{digits}g}"


def example_html(example: dict, scale: float) -> str:
    """One example: its place in the corpus and its window, each token coloured, the example token
    outlined. Hovering a token shows its activation."""
    cells = []
    for position, (token, value) in enumerate(zip(example["tokens"], example["activations"], strict=True)):
        value = float(value) if value is not None else float("nan")
        rgb = diverging_rgb(value, scale)
        dark = math.isfinite(value) and abs(value) / scale >= 0.6
        focus = " pl-focus" if position == example["focus"] else ""
        cells.append(f'<span class="pl-tok{focus}" style="background:{css_rgb(rgb)};'
                     f'color:{"#fff" if dark else "#111"}" title="{html.escape(repr(token))}: '
                     f'{_number(value, 4)}">{html.escape(display_token(token))}</span>')
    meta = f"doc {example['document']} \u00b7 tok {example['position']} \u00b7 {_number(example['activation'])}"
    return f'<div class="pl-example"><span class="pl-meta">{meta}</span>{"".join(cells)}</div>'


def examples_html(examples: Sequence[dict], scale: float, title: str) -> str:
    """A titled column of examples on the page's scale (the legend says which scale)."""
    body = "".join(example_html(example, scale) for example in examples) or "<p><i>none</i></p>"
    return (f"<style>{EXAMPLES_CSS}</style><div class=\"pl-examples\"><b>{html.escape(title)}</b>"
            f"{legend_html(scale, 'activation')}{body}</div>")


def reread_html(rereads: Sequence[dict], scale: float, variant_label: str) -> str:
    """The dense top examples read under the variant: per example a dense row and a variant row,
    token by token, on the dense scale (hover: value, change and drop)."""
    parts = [legend_html(scale, "activation")]
    for example in rereads:
        dense, variant = float(example["dense_activation"]), float(example["variant_activation"])
        drop = "n/a" if dense == 0 else f"{1 - abs(variant) / abs(dense):.0%}"
        parts.append(f'<p class="pl-meta" style="margin:8px 0 2px 0;font-size:12px">doc {example["document"]} '
                     f"\u00b7 tok {example['position']} \u00b7 dense {_number(dense)} \u2192 "
                     f"{html.escape(variant_label)} {_number(variant)} (drop {drop})</p>")
        rows = [HeatmapRow("dense", example["dense_activations"]),
                HeatmapRow(variant_label, example["variant_activations"])]
        parts.append(heatmap_html(example["tokens"], rows, scale, line_chars=120))
    return "".join(parts)


def still_fires(rereads: Sequence[dict]) -> float | None:
    """Share of the dense top examples on which the variant keeps at least half of the activation
    (same sign): does the neuron still fire on them?"""
    if not rereads:
        return None
    kept = [float(r["variant_activation"]) * float(r["dense_activation"]) > 0
            and abs(float(r["variant_activation"])) >= 0.5 * abs(float(r["dense_activation"])) for r in rereads]
    return sum(kept) / len(kept)


def histogram_figure(edges: Sequence[float], sides: Sequence[tuple[str, Sequence[int]]]) -> go.Figure:
    """Density histograms of |a| overlaid (one step line per model, as a share of its tokens) on a
    log |a| axis. ``edges``: the bins' edges, or only their lower edges (the last bin open-ended,
    drawn one octave wide). The first bin starts at 0, which a log axis cannot show: it is drawn
    from a tenth of the next edge."""
    if len(edges) < 2:
        raise ValueError("a histogram needs at least two edges")
    shown = [float(edge) for edge in edges]
    if sides and len(sides[0][1]) == len(edges):  # lower edges only: the last bin is open-ended
        shown.append(shown[-1] * 2)
    if shown[0] <= 0:
        shown[0] = shown[1] / 10
    colours = ["#444", "#d62728", "#1f77b4", "#2ca02c"]
    figure = go.Figure()
    for number, (label, counts) in enumerate(sides):
        if len(counts) != len(shown) - 1:
            raise ValueError(f"{label}: {len(counts)} counts for {len(shown) - 1} bins")
        total = sum(counts) or 1
        shares = [count / total for count in counts]
        figure.add_trace(go.Scatter(
            x=shown, y=[*shares, shares[-1]], mode="lines", line_shape="hv", name=label,
            fill="tozeroy", opacity=0.5, line={"color": colours[number % len(colours)]},
            hovertemplate="|a| from %{x:.3g}: %{y:.2%} of tokens<extra>" + html.escape(label) + "</extra>"))
    figure.update_layout(xaxis={"type": "log", "title": "|activation| (log bins)"},
                         yaxis={"title": "share of tokens", "tickformat": ".0%"}, height=300,
                         margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h"})
    return figure


def stats_table(page: dict, variant_label: str | None = None) -> pd.DataFrame:
    """Mean, mean |a|, spread, extremes and activation density, dense and variant side by side."""
    names = {"mean": "mean", "mean_abs": "mean |a|", "std": "std", "max": "max", "min": "min",
             "density": "density (share of tokens with |a| > threshold)", "count": "tokens"}
    dense = page["dense"]["stats"]
    variant = (page.get("variant") or {}).get("stats")
    rows = []
    for key, name in names.items():
        row = {"figure": name, "dense": dense.get(key)}
        if variant is not None:
            row[variant_label or "variant"] = variant.get(key)
        rows.append(row)
    return pd.DataFrame(rows)


# (key, floor key, name, how to read it): a change figure is inside its floor when it is not below it.
FLOORED = (
    ("profile_correlation", "profile_correlation_floor", "token-profile correlation"),
    ("token_overlap", "token_overlap_floor", "top-k token overlap"),
)
UNFLOORED = (
    ("pearson", "correlation over all tokens"),
    ("mass_lost", "activation mass lost (1 − Σ|a_var| / Σ|a_dense|)"),
    ("topk_overlap", "top-k positions kept"),
)


def inside_floor(change: float | None, floor: float | None) -> bool | None:
    """Whether a change figure is within corpus noise: not below what the dense model gives
    against itself on the other half of the corpus. None when either is missing."""
    if change is None or floor is None:
        return None
    return change >= floor


def agreement_table(agreement: dict) -> pd.DataFrame:
    """Each change figure next to its split-half floor, and what it reads as."""
    rows = []
    for key, floor_key, name in FLOORED:
        change, floor = agreement.get(key), agreement.get(floor_key)
        inside = inside_floor(change, floor)
        reading = "n/a" if inside is None else NOISE_LABEL if inside else "changed (below the floor)"
        rows.append({"figure": name, "dense vs variant": change, "split-half floor (dense vs dense)": floor,
                     "reading": reading})
    for key, name in UNFLOORED:
        rows.append({"figure": name, "dense vs variant": agreement.get(key),
                     "split-half floor (dense vs dense)": None, "reading": "descriptive (no floor)"})
    return pd.DataFrame(rows)


def verdict_line(agreement: dict) -> str:
    if agreement.get("not_distinguishable"):
        return f"**{NOISE_LABEL}**: each change figure is within what the dense model gives against itself."
    return "**Changed**: at least one change figure is below its split-half floor."


def weights_removed_text(removed: dict | None) -> str:
    if not removed:
        return "No variant chosen (or the variant removed none of this neuron's weights)."
    parts = [f"{name.replace('_', ' ')}: {float(value):.1%}" for name, value in removed.items()
             if isinstance(value, int | float)]
    return "Weights of this neuron the variant's mask removed \u2014 " + ", ".join(parts)


def logits_table(dense: dict, variant: dict | None, variant_label: str = "variant") -> pd.DataFrame:
    """Promoted and suppressed tokens side by side: rank, dense token and value, variant's."""
    rows = []
    for side in ("promoted", "suppressed"):
        dense_side = dense.get(side, [])
        variant_side = (variant or {}).get(side, [])
        for rank in range(max(len(dense_side), len(variant_side))):
            row = {"effect": side, "rank": rank + 1}
            if rank < len(dense_side):
                row |= {"dense token": repr(dense_side[rank]["token"]), "dense value": dense_side[rank]["value"]}
            if variant is not None and rank < len(variant_side):
                row |= {f"{variant_label} token": repr(variant_side[rank]["token"]),
                        f"{variant_label} value": variant_side[rank]["value"]}
            rows.append(row)
    return pd.DataFrame(rows)


def text_test_html(answer: dict, scale: float, variant_label: str | None) -> str:
    """Your text, dense row and variant row, on the page's dense scale."""
    rows = [HeatmapRow("dense", answer["dense"])]
    if answer.get("variant") is not None:
        rows.append(HeatmapRow(variant_label or "variant", answer["variant"]))
    return legend_html(scale, "activation") + heatmap_html(answer["tokens"], rows, scale)


def nsa_table(selections: Sequence[dict], explorer_href) -> pd.DataFrame:
    """The NSA results that selected this neuron: rank, score, words, held-out excess per variant,
    and a link that opens the result in the explorer on this neuron."""
    rows = []
    for item in selections:
        held = "; ".join(f"{row['variant']}: {_percent(row.get('mean'))} [{_percent(row.get('low'))}, "
                         f"{_percent(row.get('high'))}] {row.get('verdict') or ''}".strip()
                         for row in item.get("held_out", [])) or "no held-out figure"
        rows.append({"result": explorer_href(item["result"]), "text": item["preview"], "texts": item["n_texts"],
                     "rank": item["rank"], "score": item["score"], "words": ", ".join(item["words"]),
                     "held-out excess drop": held})
    return pd.DataFrame(rows, columns=["result", "text", "texts", "rank", "score", "words", "held-out excess drop"])


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}%"
