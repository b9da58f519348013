"""Draw "what pruning changed" (``GET /indexes/{id}/changed|divergence|search``) as tables and HTML.

Plain functions of the backend's JSON: the neurons ranked by change with each figure next to its
split-half floor, the contexts where the variant's next-token distribution diverges most, the
tokens ranked by mean KL, and the neurons found by a token. Neuron numbers become links to the
neuron page. No Streamlit, no HTTP.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

import pandas as pd
import plotly.graph_objects as go

from frontend.views.heatmap import display_token
from frontend.views.neuron_view import NOISE_LABEL

ORDERS = {
    "pearson": "lowest correlation over all tokens",
    "mass_lost": "most activation mass lost",
    "topk_overlap": "fewest top-k positions kept",
    "profile_correlation": "lowest token-profile correlation",
}
CHANGED_COLUMNS = ["neuron page", "layer", "neuron", "correlation", "mass lost", "top-k kept",
                   "profile corr.", "profile floor", "token overlap", "overlap floor", "reading"]


def changed_table(rows: Sequence[dict], href: Callable[[int, int], str]) -> pd.DataFrame:
    """One row per neuron, in the backend's order; ``href(layer, neuron)`` is its page's link."""
    table = [{
        "neuron page": href(row["layer"], row["neuron"]), "layer": row["layer"], "neuron": row["neuron"],
        "correlation": row.get("pearson"), "mass lost": row.get("mass_lost"), "top-k kept": row.get("topk_overlap"),
        "profile corr.": row.get("profile_correlation"), "profile floor": row.get("profile_correlation_floor"),
        "token overlap": row.get("token_overlap"), "overlap floor": row.get("token_overlap_floor"),
        "reading": NOISE_LABEL if row.get("not_distinguishable") else "changed",
    } for row in rows]
    return pd.DataFrame(table, columns=CHANGED_COLUMNS)


def ranked_links(rows: Sequence[dict], href: Callable[[int, int], str], count: int = 10) -> str:
    """The first ``count`` neurons of the ranking as a Markdown list of links to their pages."""
    lines = []
    for rank, row in enumerate(rows[:count], start=1):
        pearson = "n/a" if row.get("pearson") is None else f"{row['pearson']:.3f}"
        lost = "n/a" if row.get("mass_lost") is None else f"{row['mass_lost']:.0%}"
        reading = NOISE_LABEL if row.get("not_distinguishable") else "changed"
        lines.append(f"{rank}. [layer {row['layer']}, neuron {row['neuron']}]({href(row['layer'], row['neuron'])})"
                     f" · correlation {pearson} · mass lost {lost} · {reading}")
    return "\n".join(lines)


def noise_summary(rows: Sequence[dict]) -> str:
    inside = sum(bool(row.get("not_distinguishable")) for row in rows)
    return (f"{len(rows) - inside} of {len(rows)} listed neurons changed beyond their split-half floor; "
            f"{inside} are {NOISE_LABEL}.")


def changed_figure(rows: Sequence[dict]) -> go.Figure:
    """The listed neurons: correlation (x) against mass lost (y), noise-floor ones hollow."""
    figure = go.Figure()
    for inside, name, symbol in ((False, "changed", "circle"), (True, NOISE_LABEL, "circle-open")):
        chosen = [row for row in rows if bool(row.get("not_distinguishable")) == inside]
        figure.add_trace(go.Scatter(
            x=[row.get("pearson") for row in chosen], y=[row.get("mass_lost") for row in chosen], mode="markers",
            name=name, marker={"symbol": symbol, "size": 9},
            text=[f"layer {row['layer']}, neuron {row['neuron']}" for row in chosen],
            hovertemplate="%{text}<br>correlation %{x:.3f}<br>mass lost %{y:.1%}<extra></extra>"))
    figure.update_layout(xaxis={"title": "correlation dense vs variant"},
                         yaxis={"title": "mass lost", "tickformat": ".0%"}, height=320,
                         margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h"})
    return figure


def context_html(context: dict) -> str:
    """One divergent context: its tokens, the position whose next-token prediction diverged
    outlined, with the KL in nats."""
    cells = []
    for position, token in enumerate(context["tokens"]):
        style = "outline:2px solid #b2182b;background:#fddbc7" if position == context["focus"] else ""
        cells.append(f'<span style="white-space:pre;{style}">{html.escape(display_token(token))}</span>')
    return (f'<div style="margin:0 0 6px 0;font-family:ui-monospace,monospace;font-size:13px">'
            f'<span style="font-family:system-ui;font-size:11px;color:#666;margin-right:6px">'
            f"doc {context['document']} \u00b7 tok {context['position']} \u00b7 KL {context['kl']:.3g}</span>"
            f"{''.join(cells)}</div>")


def divergence_html(report: dict) -> str:
    return "".join(context_html(context) for context in report.get("top", [])) or "<p><i>none</i></p>"


def token_divergence_table(report: dict) -> pd.DataFrame:
    rows = [{"token": repr(row["token"]), "mean KL (nats)": row["mean_kl"], "positions": row["count"]}
            for row in report.get("tokens", [])]
    return pd.DataFrame(rows, columns=["token", "mean KL (nats)", "positions"])


def search_table(hits: Sequence[dict], href: Callable[[int, int], str]) -> pd.DataFrame:
    rows = [{"neuron page": href(hit["layer"], hit["neuron"]), "layer": hit["layer"], "neuron": hit["neuron"],
             "top examples on the token": hit["hits"], "largest activation": hit["max_activation"]}
            for hit in hits]
    return pd.DataFrame(rows, columns=["neuron page", "layer", "neuron", "top examples on the token",
                                       "largest activation"])
