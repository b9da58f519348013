"""Jobs and variants as the dashboard lists them: one readable line per job, grouped variants."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

ACTIVE_STATES = ("queued", "running")


def describe_job(job: dict) -> str:
    """What a job does, from its parameters: ``prune wanda 0.5 · c4`` or ``evaluate dense on sst2, rte``."""
    params = job.get("params") or {}
    if job.get("kind") == "prune":
        # A depth method's request has no sparsity: its amount is the option drop_blocks (default 1).
        amount = params.get("sparsity") or f"blocks:{(params.get('options') or {}).get('drop_blocks', 1)}"
        return (f"prune {params.get('method', '?')} {amount} \u00b7 "
                f"{params.get('calibration', '?')} ({params.get('nsamples', '?')} x {params.get('seqlen', '?')})")
    if job.get("kind") == "evaluate":
        target = params.get("variant") or "dense"
        limit = f", limit {params['limit']}" if params.get("limit") else ""
        return f"evaluate {target} on {', '.join(params.get('tasks') or [])}{limit}"
    if job.get("kind") == "nsa":
        request = params.get("request") or {}
        checks = [name for name in ("patch", "ablate") if request.get(name)]
        return (f"NSA on {len(request.get('texts') or [])} texts · {len(request.get('variants') or [])} variants"
                + (f" · {', '.join(checks)}" if checks else ""))
    return str(job.get("kind", "job"))


def any_active(jobs: Sequence[dict]) -> bool:
    return any(job.get("state") in ACTIVE_STATES for job in jobs)


def jobs_frame(jobs: Sequence[dict]) -> pd.DataFrame:
    """One row per job: what it did, what it produced (a variant id), its last message, when."""
    rows = [{
        "state": job.get("state"),
        "job": describe_job(job),
        "progress": float(job.get("progress") or 0.0),
        "produced": (job.get("result") or {}).get("variant_id") or "",
        "message": job.get("error") or job.get("message") or "",
        "finished": job.get("finished_at") or "",
        "id": job.get("id"),
    } for job in jobs]
    return pd.DataFrame(rows, columns=["state", "job", "progress", "produced", "message", "finished", "id"])


def calibration_groups(variants: Sequence[dict]) -> dict[tuple, list[dict]]:
    """Variants that differ only in their calibration set, keyed by everything else that matters.

    Key: (method, sparsity, nsamples, seqlen, seed). Each group is sorted by calibration name;
    groups with a single calibration are kept (a column of one is still a view).
    """
    groups: dict[tuple, list[dict]] = {}
    for variant in variants:
        key = (variant.get("method"), str(variant.get("sparsity")), variant.get("nsamples"),
               variant.get("seqlen"), variant.get("seed"))
        groups.setdefault(key, []).append(variant)
    return {key: sorted(rows, key=lambda v: str(v.get("calibration"))) for key, rows in groups.items()}


def group_label(key: tuple) -> str:
    method, sparsity, nsamples, seqlen, seed = key
    return f"{method} {sparsity} \u00b7 {nsamples} x {seqlen} tokens, seed {seed}"
