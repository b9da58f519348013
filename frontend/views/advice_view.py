"""Calibration advice as a table: sets ranked by the proxy, with the accuracy measured after
pruning with each (when validated) and its 95% interval."""

from __future__ import annotations

import pandas as pd

from frontend.views.tables import interval_text


def advice_frame(advice: dict) -> pd.DataFrame:
    """``GET /calibration-advice`` as rows: rank, set, proxy score, then measured accuracy and its
    95% interval where the advice was validated (blank otherwise)."""
    records = [{"rank": row["rank"], "calibration set": row["calibration"], "mask agreement": row["score"],
                "accuracy": row.get("accuracy"), "95% CI": interval_text(row.get("interval"))}
               for row in advice.get("ranking", [])]
    frame = pd.DataFrame(records, columns=["rank", "calibration set", "mask agreement", "accuracy", "95% CI"])
    frame["accuracy"] = pd.to_numeric(frame["accuracy"], errors="coerce").astype(float)
    return frame


def validation_lines(advice: dict) -> list[str]:
    """The correlation figures behind the reading, one line each (empty when not validated)."""
    validation = advice.get("validation") or {}
    lines = []
    for key, label in (("all_sets", "all sets"), ("without_task_set", f"without {advice.get('task_text')}")):
        found = validation.get(key) or {}
        if found.get("rho") is not None:
            lines.append(f"Spearman rho ({label}, n={found['n']}): {found['rho']:+.2f}, "
                         f"exact permutation p = {found['p_value']:.3f}")
    dense = validation.get("dense")
    if dense and dense.get("accuracy") is not None:
        lines.append(f"Dense model: {dense['accuracy']:.3f} {interval_text(dense.get('interval'))} on "
                     f"{dense['n_examples']} seeded examples")
    return lines
