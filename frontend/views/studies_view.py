"""Study reports as tables and links: the runs, one run's claims with their verdicts, the dense
model against chance, and where each verdict comes from (accuracy tables, NSA results).

Plain functions of the JSON that GET /studies and GET /studies/{run} return; no Streamlit here.
"""

from __future__ import annotations

import pandas as pd

from frontend.links import ViewState, page_href

CLAIM_IDS = ("C1", "C2", "C3", "C4", "C5", "C6")
# The accuracy table behind each accuracy claim: the axis the claim varies.
CLAIM_TABLES = {"C1": "task-calibration", "C2": "task-calibration", "C3": "task-sparsity",
                "C4": "task-calibration", "C5": "task-seqlen"}


def _points(value) -> str:
    return "" if value is None else f"{100 * float(value):.1f}"


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """One row per study run (newest first, as listed): its verdict per claim, blank where absent."""
    claims = [claim for claim in CLAIM_IDS if any(claim in row.get("verdicts", {}) for row in rows)]
    records = [{"run": row["run"], "study": row["study"], "profile": row["profile"],
                "seconds": row.get("seconds"),
                **{claim: row.get("verdicts", {}).get(claim, "") for claim in claims}} for row in rows]
    return pd.DataFrame(records, columns=["run", "study", "profile", "seconds", *claims])


def _estimate(claim: dict) -> str:
    estimate = claim.get("estimate")
    if not estimate or estimate.get("value") is None:
        return ""
    return (f"{_points(estimate['value'])} [{_points(estimate.get('low'))}, {_points(estimate.get('high'))}] "
            f"{estimate.get('unit', '')}").strip()


def _detectable(claim: dict) -> str:
    detectable = claim.get("detectable")
    if not detectable or detectable.get("value") is None:
        return ""
    return f"{_points(detectable['value'])} {detectable.get('unit', '')}".strip()


def claims_frame(report: dict) -> pd.DataFrame:
    """The claims of one run: what the paper says, what we measured, what we could detect, the verdict."""
    records = [{"claim": claim["id"], "what": claim.get("title", ""), "paper": claim.get("paper", ""),
                "ours (95% interval)": _estimate(claim), "minimum detectable": _detectable(claim),
                "verdict": claim["verdict"], "why": claim.get("why", "")} for claim in report.get("claims", [])]
    return pd.DataFrame(records, columns=["claim", "what", "paper", "ours (95% interval)", "minimum detectable",
                                          "verdict", "why"])


def chance_frame(report: dict) -> pd.DataFrame:
    """The dense model per task against its baseline, accuracies in points."""
    records = []
    for row in report.get("chance", []):
        if "accuracy" not in row:
            records.append({"task": row["task"], "status": row.get("status", "")})
            continue
        baseline = row.get("baseline", row.get("majority_baseline"))
        records.append({"task": row["task"], "n": row["n"], "shots": row.get("num_fewshot", 0),
                        "dense accuracy": _points(row["accuracy"]),
                        "95% interval": f"[{_points(row['low'])}, {_points(row['high'])}]",
                        "baseline": f"{_points(baseline)} ({row.get('baseline_kind', 'majority label')})",
                        "balanced accuracy": _points(row.get("balanced_accuracy")),
                        "p (> baseline)": f"{row['p_value']:.3g}", "status": row["status"]})
    return pd.DataFrame(records, columns=["task", "n", "shots", "dense accuracy", "95% interval", "baseline",
                                          "balanced accuracy", "p (> baseline)", "status"])


def claim_links(report: dict, claim: dict, current_url: str | None = None) -> list[tuple[str, str]]:
    """(label, href) of the views behind a verdict: the accuracy table of the claim's axis for the
    study's model, and each NSA result the claim used."""
    links = []
    model = (report.get("settings") or {}).get("model")
    kind = CLAIM_TABLES.get(claim["id"])
    if kind:
        links.append((f"accuracy table {kind}", page_href("accuracy", ViewState(kind=kind, model=model), current_url)))
    for result_id in claim.get("nsa_results", []):
        links.append((f"NSA result {result_id[:12]}", page_href("explorer", ViewState(result=result_id), current_url)))
    return links
