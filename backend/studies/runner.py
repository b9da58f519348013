"""Running a study: the dense model against chance, each claim's cells and NSA, then its judgement.

Order: (1) the dense model on every task of the study, so tasks it is at chance on are marked
"uninformative for this model" and left out of every claim; (2) per claim, its sweep (missing
cells only; locally or on Ray) and NSA requests, then its judge; (3) label-bias notes for the
significant changes. Nothing here writes the report (``report.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from backend.errors import UserError
from backend.evaluation.sweep import SweepSpec
from backend.studies.chance import INFORMATIVE, dense_against_chance, gold_labels, label_bias_note
from backend.studies.claims import CLAIMS, NOT_RUN
from backend.studies.evidence import ClaimEvidence, read_evidence, run_claim_cells, run_nsa_requests, sweep_for
from backend.studies.spec import ResolvedStudy

Progress = Callable[[float, str], None]


def study_tasks(study: ResolvedStudy) -> tuple[str, ...]:
    return tuple(dict.fromkeys(task for claim in study.claims.values() for task in claim.grid.tasks))


def dense_sweep(study: ResolvedStudy) -> SweepSpec:
    settings = study.settings
    return SweepSpec(name=f"{study.name}-{study.profile}-dense", models=(settings.model,), tasks=study_tasks(study),
                     methods=(), limit=settings.limit, nsamples=settings.nsamples, seed=settings.seed, dense=True,
                     batch_size=settings.batch_size)


def _chance_rows(evidence: ClaimEvidence, alpha: float) -> tuple[list[dict], dict]:
    """Per task: the dense model against its majority-label baseline; and the gold labels."""
    present = {task: evidence.dense_scores(task) for task in evidence.sweep.tasks}
    scored = {task: scores for task, scores in present.items() if scores}
    if not scored:
        return [], {}
    labels = gold_labels(list(scored), {task: sorted(scores) for task, scores in scored.items()})
    rows = [dense_against_chance(task, scores, labels[task], alpha) for task, scores in scored.items()]
    return rows, labels


def _bias_notes(evidence: ClaimEvidence, judgement: dict, labels: dict, axis: str, alpha: float) -> list[str]:
    """For each significant task row of a claim: is its change a change of label preference?"""
    significant = {row["name"] for row in judgement["rows"]
                   if row.get("level") == "task" and row.get("p_holm", 1.0) < alpha}
    notes = []
    for table in evidence.tables(axis, dense_as="0" if axis == "sparsity" else None):
        task = table.task.split(" ")[0]
        if table.task not in significant or task not in labels or not table.docs:
            continue
        accuracies = table.scores.mean(axis=1)
        low, high = int(accuracies.argmin()), int(accuracies.argmax())
        before = dict(zip(table.docs, table.scores[low].tolist(), strict=True))
        after = dict(zip(table.docs, table.scores[high].tolist(), strict=True))
        note = label_bias_note(table.task, before, after, labels[task],
                               f"{axis} {table.conditions[low]} -> {table.conditions[high]}")
        if note:
            notes.append(note)
    return notes


_AXIS = {"C1": "calibration", "C2": "calibration", "C3": "sparsity", "C4": "calibration", "C5": "seqlen"}


def run_study(study: ResolvedStudy, *, ray_address: str | None = None, compute: bool = True,
              progress: Progress | None = None) -> dict:
    """Run (``compute``) or only read back (``compute=False``) a study; its report as a dict."""
    started = time.perf_counter()
    report = progress or (lambda _fraction, _message: None)
    alpha = study.settings.alpha
    sweeps = [("dense", dense_sweep(study))] + [(claim_id, sweep_for(study, claim_id, claim.grid))
                                                for claim_id, claim in study.claims.items()]
    cell_counts = {}
    for index, (label, sweep) in enumerate(sweeps):
        if compute:
            report(index / (len(sweeps) + 1), f"{label}: cells")
            def cell_progress(fraction: float, message: str, at: int = index) -> None:
                report((at + fraction) / (len(sweeps) + 1), message)

            outcomes = run_claim_cells(sweep, ray_address=ray_address, progress=cell_progress)
            cell_counts[label] = {"computed_now": len(outcomes),
                                  "failed_now": sum(outcome.status != "done" for outcome in outcomes)}

    dense = read_evidence(sweeps[0][1])
    try:
        chance_rows, labels = _chance_rows(dense, alpha)
    except UserError as exc:  # a task whose data cannot be read: no chance check, claims go on
        chance_rows, labels = [{"task": "(all)", "status": f"not checked: {exc}"}], {}
    excluded = frozenset(row["task"] for row in chance_rows if row.get("status") not in (INFORMATIVE, None)
                         and row["task"] != "(all)")

    judgements = []
    for claim_id, claim in study.claims.items():
        definition = CLAIMS[claim_id]
        evidence = read_evidence(sweep_for(study, claim_id, claim.grid))
        evidence.excluded = excluded
        try:
            run_nsa_requests(evidence, study, claim.grid, compute=compute, progress=report)
            judgement = definition.judge(evidence, claim, study.settings)
        except UserError as exc:
            judgement = {"verdict": NOT_RUN, "why": str(exc), "ours": "", "estimate": None, "detectable": None,
                         "rows": [], "notes": []}
        if claim_id in _AXIS and judgement["verdict"] != NOT_RUN:
            judgement["notes"] += _bias_notes(evidence, judgement, labels, _AXIS[claim_id], alpha)
        excluded_here = sorted(excluded & set(claim.grid.tasks))
        if excluded_here:
            judgement["notes"].append(f"left out as uninformative for this model: {', '.join(excluded_here)}")
        judgements.append({"id": claim_id, "title": definition.title, "source": definition.source,
                           "paper": definition.paper, **judgement,
                           "cells": [{"cell": key, **record} for key, record in evidence.records.items()],
                           "nsa_results": [body["id"] for _, body in evidence.nsa]})
    for claim_id in study.skipped:
        definition = CLAIMS[claim_id]
        judgements.append({"id": claim_id, "title": definition.title, "source": definition.source,
                           "paper": definition.paper, "verdict": NOT_RUN,
                           "why": f"profile {study.profile!r} skips it", "ours": "", "estimate": None,
                           "detectable": None, "rows": [], "notes": [], "cells": [], "nsa_results": []})
    judgements.sort(key=lambda item: item["id"])
    report(1.0, "done")
    return {"study": study.name, "profile": study.profile, "paper": study.paper,
            "settings": study.settings.model_dump(), "chance": chance_rows, "claims": judgements,
            "cell_counts": cell_counts, "seconds": round(time.perf_counter() - started, 1)}
