"""How numbers and names read on the dashboard: human column names with units, percentages,
drops (a variant firing far harder reads "fires 5.9× more", not "−492.63%"), calibration sets
ordered by what works offline, and each page's short "how to read this". Plain functions, no
Streamlit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import pandas as pd

# Raw keys of the backend's JSON and lm-eval's metric names -> what a reader sees.
COLUMN_LABELS = {
    "drop_influential": "drop on influential words (%)",
    "drop_non_influential": "drop on other words (%)",
    "baseline_all_neurons": "baseline: drop of all neurons (%)",
    "baseline_non_influential": "baseline: drop on other words (%)",
    "excess_drop": "excess over baseline (% points)",
    "score": "NSA score",
    "layer_baseline": "layer baseline drop (%)",
    "achieved_sparsity": "achieved sparsity (%)",
    "nsamples": "calibration windows",
    "seqlen": "tokens per window",
    "base_model": "base model",
    "created_at": "created (UTC)",
    "acc,none": "accuracy (%)",
    "acc_norm,none": "length-normalised accuracy (%)",
    "f1,none": "F1 (%)",
    "mcc,none": "Matthews correlation (−1…1)",
}

DROP_KEYS = ("drop_influential", "drop_non_influential", "baseline_all_neurons", "baseline_non_influential",
             "layer_baseline")


def column_label(key: str) -> str:
    """A human name for a raw key; ``drop · wanda 0.5`` style columns keep their variant part."""
    head, sep, tail = key.partition(" · ")
    if sep:
        named = {"drop": "drop (%)", "baseline": "all-neuron baseline (%)",
                 "layer baseline": "layer baseline (%)", "weights removed": "weights removed (%)"}.get(head, head)
        return f"{named} · {tail}"
    return COLUMN_LABELS.get(key, key.replace("_", " "))


def human_columns(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={column: column_label(str(column)) for column in frame.columns})


def format_percent(value, digits: int = 1) -> str:
    """0.4931 -> "49.3%"; missing -> "" (an empty cell, never 0)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return ""
    return f"{100 * float(value):.{digits}f}%"


def format_drop(value, digits: int = 1) -> str:
    """A drop ``1 − |pruned| / |dense|`` as text: −100 %…100 % as a percentage; a variant firing
    more than twice as hard (drop below −100 %) as "fires N.N× more" (N = |pruned| / |dense|)."""
    text = format_percent(value, digits)
    if text and float(value) < -1.0:
        return f"fires {1.0 - float(value):.1f}\u00d7 more"
    return text


def format_columns(frame: pd.DataFrame, columns: Iterable[str], formatter) -> pd.DataFrame:
    """A copy with ``columns`` turned into text by ``formatter`` and the others untouched."""
    shown = frame.copy()
    for column in columns:
        if column in shown.columns:
            shown[column] = [formatter(value) for value in shown[column]]
    return shown


def readable_table(frame: pd.DataFrame, *, drops: Sequence[str] = (), percents: Sequence[str] = ()) -> pd.DataFrame:
    """Drops (``format_drop``) and percentages formatted, then the columns renamed for people."""
    return human_columns(format_columns(format_columns(frame, drops, format_drop), percents, format_percent))


def readable_neuron_table(table: pd.DataFrame) -> pd.DataFrame:
    """``nsa_view.neuron_table`` for people: per-variant drops and baselines as drops, the share
    of weights removed as a percentage, the NSA score to 3 decimals."""
    columns = [str(column) for column in table.columns]
    shown = table.copy()
    if "score" in shown.columns:
        shown["score"] = [f"{float(value):.3f}" for value in shown["score"]]
    return readable_table(shown, drops=[c for c in columns if c.startswith(("drop · ", "layer baseline · "))],
                          percents=[c for c in columns if c.startswith("weights removed · ")])


# ----------------------------------------------------------------------------- calibration sets


def calibration_choices(rows: Sequence[dict]) -> tuple[list[str], dict[str, str], list[str]]:
    """(selectable names, offline ones first; their labels; names not selectable now).

    Sets that need the hub are marked, and left out of the choices when the backend says they
    are not ``available`` (the hub cannot be reached). ``rows``: ``GET /calibration-sets``.
    """
    named = [row for row in rows if not str(row["name"]).startswith("file:")]
    offline = [row["name"] for row in named if row.get("offline")]
    reachable = [row["name"] for row in named if not row.get("offline") and row.get("available", True)]
    unreachable = [row["name"] for row in named if not row.get("offline") and not row.get("available", True)]
    labels = {name: name for name in offline}
    labels |= {name: f"{name} (needs the model hub)" for name in reachable + unreachable}
    return offline + reachable, labels, unreachable


# ----------------------------------------------------------------------------- how to read this

HOW_TO_READ = {
    "explorer": (
        "Each row of the heatmap is one model on the same text: **dense** first, then each pruned "
        "variant. A cell's colour is that neuron's activation on the token: red > 0, blue < 0, white "
        "≈ 0, on **one scale per neuron** (the dense model's largest |activation|), so a paler pruned "
        "row really fired less. Grey cells are start tokens (no text). **Drop** = 1 − |pruned| / "
        "|dense|: 100 % = silenced, 0 = unchanged, negative = fires harder. Compare a drop with its "
        "**baseline** (all neurons, or the neuron's layer): only the excess is due to these words."
    ),
    "attribute": (
        "NSA first asks the model which words decide the label (**influential words**; you can edit "
        "them), then scores each neuron by the share of its activation that falls on those words. "
        "The table lists the top neurons; a drop says how much of that activation a pruned variant "
        "lost, next to the drop of all neurons (what pruning takes anyway)."
    ),
    "calibration": (
        "Variants that differ only in their calibration set, side by side on the same neuron and "
        "text. If one set keeps the neuron's activation on the influential words and another does "
        "not, the calibration data decided what pruning removed. Accuracy is shown next to the "
        "dense model's on the same examples."
    ),
    "accuracy": (
        "Each cell is a mean accuracy over the stored evaluations it covers (the counts are below "
        "the table); blank = not evaluated, never zero. Colours run from the lowest to the highest "
        "value of the table. The plot puts the dense model at 0 % sparsity; diamonds are N:M "
        "patterns (2:4 = 2 of every 4 weights kept)."
    ),
    "neuron": (
        "One neuron over a fixed corpus (a neuron **index**). **Top examples**: the tokens where it "
        "fires hardest (positive and negative apart: SwiGLU neurons fire both ways), each with "
        "±8 tokens of context; the example token is outlined. Dense and variant use **one colour "
        "scale, fixed by the dense model's largest |activation|**, so a paler variant really fired "
        "less. **Re-read**: the dense top examples with the variant's activation on the same tokens. "
        "**Density**: the share of corpus tokens in each log-spaced |a| bin. Every change figure "
        "stands next to its **split-half floor** (the dense model against itself on the other half "
        "of the corpus): a figure that is not below it is *not distinguishable from corpus noise*."
    ),
    "changed": (
        "Neurons ranked by how much the variant changed them over the corpus (correlation, mass "
        "lost, top-k kept, token-profile correlation). **Floors**: what the dense model gives "
        "against itself across two halves of the corpus; a neuron whose figures are not below "
        "them is *not distinguishable from corpus noise*. **KL** is KL(dense ‖ variant) of the "
        "next-token distributions, in nats, at each corpus token."
    ),
    "jobs": (
        "Pruning and evaluation run as jobs on the backend, one at a time; this page refreshes "
        "while one is running. Calibration sets marked *needs the model hub* download their text "
        "and work only online. **Achieved sparsity** is the share of the prunable weights set to 0."
    ),
}
