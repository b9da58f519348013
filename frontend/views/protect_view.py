"""The protected-neurons experiment as tables, and the prune form's protection fields (no Streamlit here)."""

from __future__ import annotations

import pandas as pd

ARM_LABELS = {"dense": "dense", "unprotected": "unprotected", "nsa": "NSA-protected",
              "random": "random-protected (matched)"}
PROTECTION_KINDS = ("none", "NSA result", "NSA on a task")


def experiment_frame(document: dict) -> pd.DataFrame:
    """One row per (sparsity, task, arm): accuracy % with its 95 % interval, and for the protected
    arms the paired difference to the unprotected arm (points, 95 % interval, p) and its reading."""
    rows = []
    for row in document.get("rows") or []:
        versus = row.get("vs_unprotected")
        accuracy = row.get("accuracy")
        rows.append({
            "sparsity": "—" if row["arm"] == "dense" else row["sparsity"],
            "task": row["task"] + (" (protected)" if row.get("protected_task") else ""),
            "arm": ARM_LABELS.get(row["arm"], row["arm"]),
            "accuracy %": None if accuracy is None else round(100 * accuracy, 1),
            "95% CI": "" if row.get("low") is None else f"[{100 * row['low']:.1f}, {100 * row['high']:.1f}]",
            "n": row.get("n"),
            "Δ vs unprotected (pts)": None if versus is None else round(100 * versus["difference"], 1),
            "Δ 95% CI": "" if versus is None else f"[{100 * versus['low']:+.1f}, {100 * versus['high']:+.1f}]",
            "p": None if versus is None else round(versus["p_value"], 3),
            "reading": "" if versus is None else versus["verdict"],
        })
    return pd.DataFrame(rows)


def experiment_caption(document: dict) -> str:
    """What was protected, on what, and the overlap of the selection texts with the evaluation."""
    spec = document.get("spec") or {}
    nsa = (document.get("protection") or {}).get("nsa") or {}
    selection = document.get("selection") or {}
    return (f"{spec.get('method')} on {spec.get('model')}; {nsa.get('count', '?')} neurons protected "
            f"({spec.get('mode')}): the top {spec.get('ratio')} by NSA score on {selection.get('texts', '?')} "
            f"{spec.get('task')} texts, {selection.get('overlap_with_evaluation', '?')} of them among the "
            f"{spec.get('limit')} evaluation examples; the random arm protects as many neurons per layer. "
            f"Status: {document.get('status')}.")


def protection_fields(kind: str, reference: str = "", task: str = "sst2", ratio: float | None = None,
                      mode: str = "keep", factor: float | None = None) -> dict:
    """The POST /variants fields of the prune form's protection choice ({} for none); a ratio or
    factor left None takes the backend's default."""
    if kind == "none":
        return {}
    fields: dict = {"protect_mode": mode}
    if mode == "upweight" and factor is not None:
        fields["protect_factor"] = float(factor)
    if kind == "NSA result":
        fields["protect"] = reference.strip()
    else:
        fields["protect_task"] = task
        if ratio is not None:
            fields["protect_ratio"] = float(ratio)
    return fields
