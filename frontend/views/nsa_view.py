"""Read an NSA result (schema ``prunelens.nsa`` 1.x, see docs/nsa.md) into what the pages draw.

Everything here is a plain function of the result dict the backend returned: heatmap rows of
one neuron, the neuron table, per-word drops, the layer x neuron loss points, and the CSV /
HTML exports. No Streamlit, no HTTP.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import pandas as pd

from frontend.views.heatmap import (
    LINE_CHARS,
    HeatmapRow,
    heatmap_document,
    heatmap_html,
    legend_html,
)

SUPPORTED_MAJOR = "2"


def check_schema(result: dict) -> str | None:
    """A readable warning when the result's schema is one this dashboard does not know."""
    version = str(result.get("schema_version", ""))
    if result.get("kind") not in (None, "prunelens.nsa"):
        return f"not an NSA result (kind {result.get('kind')!r})"
    if version.split(".")[0] != SUPPORTED_MAJOR:
        return f"NSA result schema {version or '?'} is not supported (this dashboard reads 1.x)"
    return None


def variant_label(info: dict) -> str:
    """A short human name for a variant: ``wanda 0.5 · c4`` (its id when the manifest is bare)."""
    parts = [str(info[key]) for key in ("method", "sparsity") if info.get(key) not in (None, "")]
    if info.get("calibration") not in (None, "", "none"):  # magnitude pruning uses no calibration
        parts.append(f"\u00b7 {info['calibration']}")
    return " ".join(parts) if parts else str(info.get("id", "?"))


def variant_labels(result: dict) -> dict[str, str]:
    """``{variant id: label}`` in the result's order; labels made unique with the id if needed."""
    labels: dict[str, str] = {}
    for info in result.get("variants", []):
        label = variant_label(info)
        if label in labels.values():
            label = f"{label} ({info['id']})"
        labels[info["id"]] = label
    return labels


def text_preview(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "\u2026"


def neuron_keys(result: dict) -> list[tuple[int, int]]:
    """The selected neurons as ``(layer, index)``, best rank first."""
    return [(n["layer"], n["index"]) for n in sorted(result.get("neurons", []), key=lambda n: n["rank"])]


def _heatmap_entry(result: dict, text_index: int) -> dict | None:
    for entry in result.get("heatmaps", []):
        if entry.get("text") == text_index:
            return entry
    return None


def heatmap_rows(
    result: dict, text_index: int, layer: int, index: int, variants: Sequence[str] | None = None
) -> tuple[list[str], list[HeatmapRow], float] | None:
    """Tokens, rows (dense first, then the chosen variants in order) and the neuron's scale.

    None when that neuron or text is not in the result (only selected neurons are recorded).
    """
    entry = _heatmap_entry(result, text_index)
    if entry is None:
        return None
    neuron = next((n for n in entry["neurons"] if n["layer"] == layer and n["index"] == index), None)
    if neuron is None:
        return None
    labels = variant_labels(result)
    chosen = list(neuron["variants"]) if variants is None else [v for v in variants if v in neuron["variants"]]
    rows = [HeatmapRow("dense", neuron["dense"])]
    rows += [HeatmapRow(labels.get(vid, vid), neuron["variants"][vid]) for vid in chosen]
    return list(entry["tokens"]), rows, float(neuron["scale"])


def neuron_heatmap_html(result: dict, text_index: int, layer: int, index: int,
                        variants: Sequence[str] | None = None, *, line_chars: int = LINE_CHARS) -> str | None:
    """Legend + heatmap fragment of one neuron on one text (None when not in the result).

    ``line_chars``: characters of text per wrapped line (narrower for side-by-side columns).
    """
    found = heatmap_rows(result, text_index, layer, index, variants)
    if found is None:
        return None
    tokens, rows, scale = found
    return (legend_html(scale, f"layer {layer}, neuron {index}")
            + heatmap_html(tokens, rows, scale, line_chars=line_chars))


def _top_words(neuron: dict, limit: int = 4) -> str:
    seen: list[str] = []
    for row in neuron.get("attributed_words", []):
        word = row["word"]
        if word.lower() not in (w.lower() for w in seen):
            seen.append(word)
        if len(seen) == limit:
            break
    return ", ".join(seen)


def neuron_table(result: dict) -> pd.DataFrame:
    """One row per selected neuron: rank, layer, neuron, score, words, its specificity to the words
    (z-score and percentile of the score among random token sets of the same size), then per
    variant its drop on the influential tokens, the layer's baseline drop and the share of
    weights removed."""
    labels = variant_labels(result)
    records = []
    for neuron in sorted(result.get("neurons", []), key=lambda n: n["rank"]):
        row = {
            "rank": neuron["rank"],
            "layer": neuron["layer"],
            "neuron": neuron["index"],
            "score": neuron["score"],
            "words": _top_words(neuron),
            "specificity z": (neuron.get("specificity") or {}).get("z"),
            "specificity percentile": (neuron.get("specificity") or {}).get("percentile"),
        }
        for vid, label in labels.items():
            info = neuron.get("variants", {}).get(vid)
            row[f"drop · {label}"] = None if info is None else info.get("drop_influential")
            row[f"layer baseline · {label}"] = None if info is None else info.get("layer_baseline")
            removed = None if info is None else info.get("weights_removed", {}).get("fraction")
            row[f"weights removed · {label}"] = removed
        records.append(row)
    columns = ["rank", "layer", "neuron", "score", "words", "specificity z", "specificity percentile"]
    for label in labels.values():
        columns += [f"drop · {label}", f"layer baseline · {label}", f"weights removed · {label}"]
    return pd.DataFrame.from_records(records, columns=columns)


def loss_points(result: dict, variant_id: str) -> pd.DataFrame:
    """Where activation was lost: per selected neuron its layer, index, score and drop in a variant."""
    rows = []
    for neuron in result.get("neurons", []):
        info = neuron.get("variants", {}).get(variant_id)
        if info is None:
            continue
        rows.append({
            "layer": neuron["layer"],
            "neuron": neuron["index"],
            "score": neuron["score"],
            "drop": info.get("drop_influential"),
            "layer_baseline": info.get("layer_baseline"),
            "words": _top_words(neuron, 3),
        })
    return pd.DataFrame(rows, columns=["layer", "neuron", "score", "drop", "layer_baseline", "words"])


def word_drops(result: dict, text_index: int) -> pd.DataFrame:
    """Per influential word of one text: each variant's drop and its all-neuron baseline."""
    labels = variant_labels(result)
    table: dict[str, dict] = {}
    order: list[str] = []
    for comparison in result.get("comparison", []):
        label = labels.get(comparison["variant"], comparison["variant"])
        for text in comparison.get("texts", []):
            if text["text"] != text_index:
                continue
            for word in text.get("words", []):
                if word["word"] not in table:
                    table[word["word"]] = {"word": word["word"]}
                    order.append(word["word"])
                table[word["word"]][f"drop · {label}"] = word.get("drop")
                table[word["word"]][f"baseline · {label}"] = word.get("baseline_all_neurons")
    columns = ["word"]
    for label in labels.values():
        columns += [f"drop · {label}", f"baseline · {label}"]
    return pd.DataFrame([table[w] for w in order], columns=columns)


def variant_summary(result: dict) -> pd.DataFrame:
    """Per variant, the text-level figures averaged over texts, next to their baselines."""
    labels = variant_labels(result)
    rows = []
    for comparison in result.get("comparison", []):
        aggregate = comparison.get("aggregate", {})
        rows.append({"variant": labels.get(comparison["variant"], comparison["variant"]),
                     "id": comparison["variant"], **aggregate})
    return pd.DataFrame(rows, columns=["variant", "id", "drop_influential", "baseline_all_neurons",
                                       "baseline_non_influential", "excess_drop"])


def influential_words_table(result: dict) -> pd.DataFrame:
    """Per text and influential word: where the word came from, its character spans and tokens."""
    rows = []
    for text in result.get("texts", []):
        influential = text.get("influential", {})
        for word in influential.get("words", []):
            rows.append({
                "text": text["index"],
                "word": word["word"],
                "source": influential.get("source"),
                "occurrences": len(word.get("spans", [])),
                "tokens": len(word.get("tokens", [])),
                "margin change": word.get("margin_change"),
                "no effect": word.get("no_effect"),
            })
    return pd.DataFrame(rows, columns=["text", "word", "source", "occurrences", "tokens", "margin change",
                                       "no effect"])


def words_of_text(result: dict, text_index: int) -> list[str]:
    for text in result.get("texts", []):
        if text["index"] == text_index:
            return [w["word"] for w in text.get("influential", {}).get("words", [])]
    return []


def parse_word_list(text: str) -> list[str]:
    """Words the user typed: comma- or newline-separated, trimmed, duplicates dropped."""
    words: list[str] = []
    for part in text.replace("\n", ",").split(","):
        word = part.strip()
        if word and word.lower() not in (w.lower() for w in words):
            words.append(word)
    return words


def result_csv(result: dict) -> str:
    """The neuron table as CSV (one row per selected neuron, per-variant columns)."""
    buffer = io.StringIO()
    neuron_table(result).to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL)
    return buffer.getvalue()


def result_heatmap_document(result: dict, max_neurons: int = 20) -> str:
    """Every text's heatmaps of the top ``max_neurons`` neurons as one standalone HTML page."""
    model = result.get("model", {}).get("name", "model")
    sections = []
    for text in result.get("texts", []):
        words = ", ".join(words_of_text(result, text["index"])) or "none"
        for layer, index in neuron_keys(result)[:max_neurons]:
            fragment = neuron_heatmap_html(result, text["index"], layer, index)
            if fragment is not None:
                heading = (f"Text {text['index']} \u00b7 layer {layer}, neuron {index} "
                           f"\u00b7 influential words: {words}")
                sections.append((heading, fragment))
    notes = (f"NSA result on {model}, task {result.get('task')}. Rows: dense, then each pruned variant; "
             "colours share one scale per neuron (the dense model's max |a| on the text). "
             "Hover a token for its exact value and drop.")
    return heatmap_document(f"PruneLens NSA heatmaps \u2014 {model}", sections, notes)
