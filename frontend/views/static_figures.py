"""Paper-ready static figures (SVG and PDF, vector, fonts embedded) with matplotlib.

Plain functions from the same data the dashboard draws: a neuron's token heatmap, "where
activation was lost", accuracy vs sparsity, and a verdict card from a plain dict. matplotlib
needs no browser binary (plotly's static export, kaleido, does). Figures are built with
``matplotlib.figure.Figure`` (no pyplot global state, safe in Streamlit's threads).

Fonts: PDF embeds TrueType subsets (``pdf.fonttype`` 42, so text stays selectable); SVG draws
glyphs as paths (``svg.fonttype`` "path", so it looks the same without the font installed) and
keeps each string in a comment beside its glyphs.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # the Literal of rcParams names (stubs only here)

from frontend.views.heatmap import (
    NEGATIVE_RGB,
    POSITIVE_RGB,
    HeatmapRow,
    display_token,
    diverging_rgb,
    token_lines,
)

FIGURE_FORMATS = ("svg", "pdf")
MIME_TYPES = {"svg": "image/svg+xml", "pdf": "application/pdf"}
SPECIAL_TOKEN_GREY = "#d9d9d9"
_EXPORT_RC: dict[RcKeyType, Any] = {
    "pdf.fonttype": 42, "svg.fonttype": "path", "font.family": "DejaVu Sans",
    "svg.hashsalt": "prunelens", "axes.titlesize": 11, "axes.labelsize": 10}


def _unit(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in rgb)  # type: ignore[return-value]


DROP_CMAP = LinearSegmentedColormap.from_list(
    "prunelens_drop", [_unit(NEGATIVE_RGB), (1, 1, 1), _unit(POSITIVE_RGB)])


def figure_bytes(figure: Figure, figure_format: str) -> bytes:
    """The figure as SVG or PDF bytes (vector; fonts embedded, see the module docstring)."""
    if figure_format not in FIGURE_FORMATS:
        raise ValueError(f"figure format {figure_format!r}: use svg or pdf")
    buffer = io.BytesIO()
    with matplotlib.rc_context(_EXPORT_RC):
        figure.savefig(buffer, format=figure_format, bbox_inches="tight",
                       metadata={"Creator": "PruneLens"} if figure_format == "pdf" else {"Date": None})
    return buffer.getvalue()


# ----------------------------------------------------------------------------- heatmap


def heatmap_figure(tokens: Sequence[str], rows: Sequence[HeatmapRow], scale: float, *,
                   title: str = "", line_chars: int = 60) -> Figure:
    """One neuron's token heatmap: wrapped lines of tokens, one row per model (dense first),
    cells coloured on the dense scale ±``scale`` like the dashboard; start tokens in grey."""
    lines = token_lines(tokens, line_chars)
    width_chars = max((sum(max(1, len(display_token(tokens[p]))) for p in line) for line in lines), default=1)
    label_chars = max(len(row.label) for row in rows)
    char_w, row_h = 0.085, 0.26  # inches
    height_rows = len(lines) * (len(rows) + 0.6)
    figure = Figure(figsize=(min(0.4 + (label_chars + width_chars) * char_w, 14), 0.9 + height_rows * row_h))
    axes = figure.add_axes((0, 0, 1, 0.9 if title else 1))
    axes.set_xlim(-label_chars - 1, width_chars + 0.5)
    axes.set_ylim(height_rows, -0.2)
    axes.axis("off")
    y = 0.0
    for line in lines:
        for row in rows:
            axes.text(-1, y + 0.5, row.label, ha="right", va="center", fontsize=8, color="#333")
            x = 0.0
            for position in line:
                token = tokens[position]
                text = display_token(token)
                size = max(1, len(text))
                value = float(row.values[position])
                special = token == ""
                color = SPECIAL_TOKEN_GREY if special else _unit(diverging_rgb(value, scale))
                axes.add_patch(FancyBboxPatch((x + 0.05, y + 0.08), size - 0.1, 0.84,
                                              boxstyle="round,pad=0,rounding_size=0.15",
                                              facecolor=color, edgecolor="none"))
                light = not special and scale > 0 and abs(value) / scale >= 0.6
                axes.text(x + size / 2, y + 0.52, text, ha="center", va="center", fontsize=7.5,
                          family="DejaVu Sans Mono", color="#888" if special else ("white" if light else "#111"))
                x += size
            y += 1
        y += 0.6
    if title:
        figure.suptitle(title, fontsize=10, x=0.01, ha="left")
    return figure


# ----------------------------------------------------------------------------- activation loss


def activation_loss_static(points, *, title: str = "", layers: int | None = None,
                           neurons_per_layer: int | None = None) -> Figure:
    """Selected neurons at (neuron index, layer), coloured by drop (-100 %…+100 %), sized by
    NSA score; ``points`` as in ``nsa_view.loss_points``."""
    figure = Figure(figsize=(7.0, 3.6))
    axes = figure.add_subplot()
    drops = points["drop"].astype(float).fillna(0.0)
    top = float(points["score"].max() or 1.0) if len(points) else 1.0
    sizes = 20 + 120 * points["score"].astype(float) / max(top, 1e-12)
    scatter = axes.scatter(points["neuron"], points["layer"], c=drops, cmap=DROP_CMAP,
                           norm=Normalize(-1.0, 1.0), s=sizes, edgecolors="#555", linewidths=0.6)
    colorbar = figure.colorbar(scatter, ax=axes, format=lambda value, _pos: f"{value:.0%}")
    colorbar.set_label("activation drop (1 = silenced)")
    axes.set_xlabel("neuron index")
    axes.set_ylabel("layer")
    if layers:
        axes.set_ylim(layers - 0.5, -0.5)
    else:
        axes.invert_yaxis()
    if neurons_per_layer:
        axes.set_xlim(-0.5, neurons_per_layer - 0.5)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- accuracy


def accuracy_sparsity_static(frame) -> Figure:
    """One panel per task category, a line per task over unstructured sparsity (dense at 0) and
    N:M patterns as diamonds; ``frame`` from ``figures.accuracy_by_sparsity``."""
    categories = sorted(frame["category"].unique()) if not frame.empty else ["no evaluations"]
    figure = Figure(figsize=(3.4 * len(categories) + 1.2, 3.4))
    axes_list = figure.subplots(1, len(categories), sharey=True, squeeze=False)[0]
    palette = matplotlib.colormaps["tab10"]
    tasks = sorted(frame["task"].unique()) if not frame.empty else []
    colors = {task: palette(i % 10) for i, task in enumerate(tasks)}
    for axes, category in zip(axes_list, categories, strict=True):
        axes.set_title(category)
        axes.set_xlabel("sparsity (weights removed)")
        axes.xaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
        axes.grid(alpha=0.3)
        if frame.empty:
            continue
        for task, rows in frame[frame["category"] == category].groupby("task"):
            lines = rows[~rows["structured"]].sort_values("fraction")
            axes.plot(lines["fraction"], lines["accuracy"], marker="o", color=colors[task], label=task)
            patterns = rows[rows["structured"]]
            if not patterns.empty:
                axes.scatter(patterns["fraction"], patterns["accuracy"], marker="D", s=40,
                             color=colors[task], label=f"{task} N:M")
        axes.legend(fontsize=7, loc="lower left")
    axes_list[0].set_ylabel("accuracy")
    axes_list[0].yaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
    figure.tight_layout()
    return figure


# ----------------------------------------------------------------------------- verdict card


def verdict_card_static(card: dict) -> Figure:
    """A card from a plain dict: ``title``, ``verdict`` (the one-line answer), ``rows`` (a list
    of ``[label, value]`` pairs or a dict) and optional ``note`` (``verdict_view.verdict_cards``
    makes these). Long texts wrap, and the card grows to hold them."""
    rows = card.get("rows") or []
    pairs = list(rows.items()) if isinstance(rows, dict) else [tuple(row) for row in rows]
    # Wrapped blocks top to bottom: (x, lines, style); widths in characters fit a 6-inch card.
    blocks: list[tuple[Any, Any, dict[str, Any]]] = [(0.05, textwrap.wrap(str(card.get("verdict", "")), 60) or [""],
               {"fontsize": 10.5, "color": _unit(POSITIVE_RGB)})]
    for label, value in pairs:
        blocks.append(((0.07, 0.5), (textwrap.wrap(str(label), 32) or [""], textwrap.wrap(str(value), 36) or [""]),
                       {"fontsize": 9}))
    if card.get("note"):
        blocks.append((0.05, textwrap.wrap(str(card["note"]), 86), {"fontsize": 8, "color": "#666", "style": "italic"}))
    line_in = 0.19  # inches per text line
    heights = [max(len(part) for part in lines) if isinstance(x, tuple) else len(lines) for x, lines, _ in blocks]
    total_in = 0.75 + line_in * (sum(heights) + 0.5 * len(blocks))
    figure = Figure(figsize=(6.0, total_in))
    axes = figure.add_axes((0, 0, 1, 1))
    axes.axis("off")
    axes.add_patch(FancyBboxPatch((0.02, 0.03), 0.96, 0.94, boxstyle="round,pad=0,rounding_size=0.03",
                                  facecolor="#f7f7f7", edgecolor="#999", transform=axes.transAxes))
    axes.text(0.05, 1 - 0.2 / total_in, str(card.get("title", "Verdict")), fontsize=12, weight="bold", va="top",
              transform=axes.transAxes)
    top_in = 0.55
    for (x, lines, style), height in zip(blocks, heights, strict=True):
        y = 1 - top_in / total_in
        if isinstance(x, tuple):  # a [label, value] row: label grey on the left, value beside it
            axes.text(x[0], y, "\n".join(lines[0]), va="top", color="#444", transform=axes.transAxes, **style)
            axes.text(x[1], y, "\n".join(lines[1]), va="top", transform=axes.transAxes, **style)
        else:
            axes.text(x, y, "\n".join(lines), va="top", transform=axes.transAxes, **style)
        top_in += line_in * (height + 0.5)
    return figure


# ----------------------------------------------------------------------------- from an NSA result


def neuron_heatmap_static(result: dict, text_index: int, layer: int, index: int,
                          variants: Sequence[str] | None = None) -> Figure | None:
    """The heatmap figure of one neuron on one text of an NSA result (None when not recorded)."""
    from frontend.views.nsa_view import heatmap_rows

    found = heatmap_rows(result, text_index, layer, index, variants)
    if found is None:
        return None
    tokens, rows, scale = found
    title = (f"layer {layer}, neuron {index} · text {text_index} · colour scale ±{scale:.3g} "
             "(dense max |a|; blue < 0 < red)")
    return heatmap_figure(tokens, rows, scale, title=title)


def activation_loss_for_variant(result: dict, variant_id: str) -> Figure | None:
    """"Where activation was lost" in one variant of an NSA result (None when the variant is absent)."""
    from frontend.views.nsa_view import loss_points, variant_labels

    labels = variant_labels(result)
    if variant_id not in labels:
        return None
    model = result.get("model") or {}
    return activation_loss_static(loss_points(result, variant_id),
                                  title=f"where activation was lost · {labels[variant_id]}",
                                  layers=model.get("layers"), neurons_per_layer=model.get("neurons_per_layer"))
