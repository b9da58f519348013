"""Token heatmaps as self-contained HTML: one row per model (dense first), tokens aligned.

Colours are diverging and signed (blue < 0 < red, white at 0) because SwiGLU neurons fire
both ways. One neuron has one scale, the dense model's max |a| on the text, so a pruned
row that is paler really fired less: it is never re-normalised to look as strong. Values
beyond the scale (a variant firing harder than dense) are drawn at full saturation and the
hover text says so. Hovering a cell shows the exact value and, on variant rows, the change
against the dense row.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

WHITE = (255, 255, 255)
POSITIVE_RGB = (178, 24, 43)  # RdBu's deep red
NEGATIVE_RGB = (33, 102, 172)  # RdBu's deep blue
# Above this share of the scale the background is dark enough that black text is hard to read.
LIGHT_TEXT_FROM = 0.6
# Results store activations with 6 significant digits while the scale keeps full precision: a
# value this close to the scale is the dense maximum itself, not beyond it.
SCALE_TOLERANCE = 1e-4
# Tokens are drawn in lines of about this many characters so a long text wraps, each line a
# small table whose rows stay aligned token by token.
LINE_CHARS = 90
WORD_OVERRUN = 12  # characters a line may exceed LINE_CHARS by to keep a word's pieces together

HEATMAP_CSS = """
.pl-heatmap { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  overflow-x: auto; max-width: 100%; }
.pl-heatmap table.pl-line { border-collapse: separate; border-spacing: 1px 2px; margin: 0 0 10px 0; }
.pl-heatmap th { text-align: right; font-weight: 600; padding: 1px 8px 1px 0; white-space: nowrap;
  color: #444; max-width: 16em; overflow: hidden; text-overflow: ellipsis; }
.pl-heatmap td { white-space: pre; padding: 2px 1px; border-radius: 3px; text-align: center;
  min-width: 0.6em; cursor: default; }
.pl-heatmap td.pl-over { outline: 1px dashed #222; }
.pl-heatmap td.pl-special { background: #e6e6e6; color: #999; }
.pl-legend { display: flex; align-items: center; gap: 8px; font-size: 12px; margin: 4px 0 10px 0;
  font-family: system-ui, sans-serif; color: #333; }
.pl-legend .pl-bar { width: 220px; height: 12px; border: 1px solid #bbb; border-radius: 2px; }
"""


@dataclass(frozen=True)
class HeatmapRow:
    """One model's signed activations of one neuron, one value per token."""

    label: str
    values: Sequence[float]


def diverging_rgb(value: float, scale: float) -> tuple[int, int, int]:
    """The colour of ``value`` on a scale of ±``scale``: white at 0, saturated at |value| >= scale."""
    if not math.isfinite(value) or scale <= 0 or not math.isfinite(scale):
        return WHITE
    share = max(-1.0, min(1.0, value / scale))
    end = POSITIVE_RGB if share > 0 else NEGATIVE_RGB
    weight = abs(share)
    return tuple(round(w + (e - w) * weight) for w, e in zip(WHITE, end, strict=True))  # type: ignore[return-value]


def css_rgb(rgb: tuple[int, int, int]) -> str:
    return f"rgb({rgb[0]},{rgb[1]},{rgb[2]})"


def token_drop(dense: float, variant: float) -> float | None:
    """Relative loss of activation magnitude on one token: ``1 - |variant| / |dense|``.

    0 = unchanged, 1 = silenced, negative = fires harder; None when dense is exactly 0.
    """
    if dense == 0 or not math.isfinite(dense) or not math.isfinite(variant):
        return None
    return 1.0 - abs(variant) / abs(dense)


def display_token(token: str) -> str:
    """What a token looks like in a cell: newlines and tabs made visible, empty ones marked."""
    if token == "":
        return "\u2205"  # special tokens (BOS) cover no characters
    return token.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u21e5")


def _format(value: float) -> str:
    return f"{value:+.4g}"


def _hover(token: str, label: str, value: float, dense: float | None, scale: float) -> str:
    parts = [f"{token!r} \u00b7 {label}: {_format(value)}"]
    if dense is not None:
        parts.append(f"dense {_format(dense)}, \u0394 {_format(value - dense)}")
        drop = token_drop(dense, value)
        parts.append("drop n/a (dense is 0)" if drop is None else f"drop {drop:.1%}")
    if scale > 0 and abs(value) > scale * (1.0 + SCALE_TOLERANCE):
        parts.append(f"beyond the dense scale \u00b1{scale:.4g}")
    return " \u00b7 ".join(parts)


def token_lines(tokens: Sequence[str], width: int) -> list[range]:
    """Split token positions into consecutive runs of about ``width`` characters each, between
    words where possible (a token that continues a word may overrun the width a little)."""
    runs, start, used = [], 0, 0
    for position, token in enumerate(tokens):
        size = max(1, len(display_token(token)))
        inside_word = token[:1] != "" and not token[:1].isspace()  # punctuation sticks to its word
        if used and used + size > width and not (inside_word and used + size <= width + WORD_OVERRUN):
            runs.append(range(start, position))
            start, used = position, 0
        used += size
    if start < len(tokens):
        runs.append(range(start, len(tokens)))
    return runs


def heatmap_html(
    tokens: Sequence[str],
    rows: Sequence[HeatmapRow],
    scale: float,
    *,
    reference: int = 0,
    line_chars: int = LINE_CHARS,
) -> str:
    """An HTML fragment: the tokens in lines, each line one row per model, cells coloured.

    ``rows[reference]`` (the dense model) is what the other rows' hover compares with;
    ``scale`` is that neuron's dense max |a| on the text.
    """
    if not rows:
        raise ValueError("a heatmap needs at least one row")
    for row in rows:
        if len(row.values) != len(tokens):
            raise ValueError(f"row {row.label!r} has {len(row.values)} values for {len(tokens)} tokens")
    dense = rows[reference].values
    out = ['<div class="pl-heatmap">']
    for line in token_lines(tokens, line_chars):
        out.append('<table class="pl-line">')
        for row_index, row in enumerate(rows):
            out.append(f'<tr><th title="{html.escape(row.label)}">{html.escape(row.label)}</th>')
            for position in line:
                value = float(row.values[position])
                if tokens[position] == "":
                    # A start token covers no characters; its activation (often an outlier) is not
                    # part of the text, so it is drawn grey rather than as a coloured cell.
                    out.append(f'<td class="pl-special" title="start token (no text): {_format(value)}">'
                               f"{display_token('')}</td>")
                    continue
                rgb = diverging_rgb(value, scale)
                share = abs(value) / scale if scale > 0 else 0.0
                text_color = "#fff" if share >= LIGHT_TEXT_FROM else "#111"
                over = ' class="pl-over"' if scale > 0 and share > 1.0 + SCALE_TOLERANCE else ""
                compare = None if row_index == reference else float(dense[position])
                hover = _hover(tokens[position], row.label, value, compare, scale)
                out.append(
                    f'<td{over} style="background:{css_rgb(rgb)};color:{text_color}" '
                    f'title="{html.escape(hover)}">{html.escape(display_token(tokens[position]))}</td>'
                )
            out.append("</tr>")
        out.append("</table>")
    out.append("</div>")
    return "".join(out)


def legend_html(scale: float, what: str = "activation") -> str:
    """The colour bar of one neuron's scale: -scale (blue) … 0 (white) … +scale (red)."""
    gradient = f"linear-gradient(to right, {css_rgb(NEGATIVE_RGB)}, {css_rgb(WHITE)}, {css_rgb(POSITIVE_RGB)})"
    return (
        f'<div class="pl-legend"><span>{_format(-scale)}</span>'
        f'<span class="pl-bar" style="background:{gradient}"></span>'
        f"<span>{_format(scale)}</span><span>{html.escape(what)}; scale = dense max |a|</span></div>"
    )


def styled_fragment(body: str) -> str:
    """A fragment with its stylesheet, ready for ``st.html``."""
    return f"<style>{HEATMAP_CSS}</style>{body}"


def heatmap_document(title: str, sections: Sequence[tuple[str, str]], notes: str = "") -> str:
    """A standalone HTML page (no external resources) of titled heatmap sections, for download."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        (f"<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#111}}"
         f"h1{{font-size:20px}}h2{{font-size:15px;margin-top:22px}}{HEATMAP_CSS}</style>"),
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if notes:
        parts.append(f"<p>{html.escape(notes)}</p>")
    for heading, fragment in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{fragment}")
    parts.append("</body></html>")
    return "\n".join(parts)
