"""The paper's six claims (arXiv 2503.01542): what each says, its number, and how we judge it.

Each judge reads a claim's evidence (``evidence.ClaimEvidence``) and returns one judgement: the
paper's number, ours with its interval, the minimum effect our n detects, and a verdict:
replicated (the paper's direction, significant at ``alpha`` after Holm), contradicted (the
opposite direction, significant), not distinguishable (neither), or not run (with why).
Percent figures are accuracy points (0..1 internally).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from backend.studies.claim_tests import (
    Outcomes,
    detectable_accuracy_change,
    detectable_difference,
    holm,
    independent_difference,
    paired_difference,
    spread_difference,
    spread_interval,
    spread_test,
    trend_interval,
    trend_test,
)
from backend.studies.evidence import ClaimEvidence
from backend.studies.spec import Claim, Settings

REPLICATED, NOT_DISTINGUISHABLE, CONTRADICTED, NOT_RUN = (
    "replicated", "not distinguishable", "contradicted", "not run")
C2_DEFAULT_MARGIN = 0.03  # an excess spread whose upper bound stays under 3 points counts as robust
C4_BEST = ("c4", "wikitext2")
C5_DIRECTIONS = {"arc_challenge": "short", "arc_easy": "short", "mrpc": "long"}  # the paper's Table 5


@dataclass(frozen=True)
class ClaimDefinition:
    id: str
    title: str
    source: str
    paper: str
    judge: Callable[[ClaimEvidence, Claim, Settings], dict]


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _judgement(verdict: str, why: str, ours: str = "", estimate: dict | None = None,
               detectable: dict | None = None, rows: list[dict] | None = None, notes: list[str] | None = None) -> dict:
    return {"verdict": verdict, "why": why, "ours": ours, "estimate": estimate, "detectable": detectable,
            "rows": rows or [], "notes": notes or []}


def _not_run(evidence: ClaimEvidence, what: str) -> dict:
    failures = evidence.failures()
    why = f"{what}; {failures[0]}" if failures else what
    return _judgement(NOT_RUN, why)


def _by_category(tables: list[Outcomes]) -> dict[str, list[Outcomes]]:
    grouped: dict[str, list[Outcomes]] = {}
    for table in tables:
        grouped.setdefault(table.category, []).append(table)
    return grouped


def _accuracy_mde(tables: list[Outcomes], settings: Settings) -> dict:
    n = min(table.n for table in tables)
    accuracy = float(np.mean([table.scores.mean() for table in tables]))
    value = detectable_accuracy_change(n, accuracy, settings.alpha, settings.power)
    return {"value": value, "unit": "accuracy points between two conditions",
            "note": f"n = {n} examples per condition, {settings.power:.0%} power, two-sided alpha {settings.alpha}"}


def _spread_rows(groups: dict[str, list[Outcomes]], settings: Settings) -> tuple[list[dict], dict[str, dict]]:
    """One row per category (pooled test + interval) and per task; Holm within each level."""
    seed, resamples = settings.seed, settings.resamples
    per_category = {category: {**spread_test(tables, resamples, seed), **spread_interval(tables, resamples, seed)}
                    for category, tables in groups.items()}
    for category, adjusted in zip(per_category, holm([row["p_value"] for row in per_category.values()],
                                                     settings.alpha), strict=True):
        per_category[category]["p_holm"] = adjusted
    rows = [{"level": "category", "name": category, **figures} for category, figures in per_category.items()]
    tables = [table for group in groups.values() for table in group]
    task_rows = [{"level": "task", "name": table.task, "category": table.category,
                  "accuracies": dict(zip(table.conditions, table.scores.mean(axis=1).round(4).tolist(), strict=True)),
                  **spread_test([table], resamples, seed)} for table in tables]
    for row, adjusted in zip(task_rows, holm([row["p_value"] for row in task_rows], settings.alpha), strict=True):
        row["p_holm"] = adjusted
    return rows + task_rows, per_category


def judge_c1(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    groups = _by_category(evidence.tables("calibration"))
    if "sentiment" not in groups or "reasoning" not in groups:
        return _not_run(evidence, "needs sentiment and reasoning tasks pruned with two calibration sets or more")
    rows, categories = _spread_rows(groups, settings)
    difference = spread_difference(groups["sentiment"], groups["reasoning"], settings.resamples, settings.seed)
    rows.append({"level": "comparison", "name": "sentiment - reasoning", **difference})
    sentiment, reasoning = categories["sentiment"], categories["reasoning"]
    ours = (f"excess spread across calibration sets: sentiment {_pts(sentiment['spread'])} pts "
            f"[{_pts(sentiment['low'])}, {_pts(sentiment['high'])}] (Holm p = {sentiment['p_holm']:.3g}), "
            f"reasoning {_pts(reasoning['spread'])} pts [{_pts(reasoning['low'])}, {_pts(reasoning['high'])}] "
            f"(Holm p = {reasoning['p_holm']:.3g}); sentiment - reasoning {_pts(difference['difference'])} pts "
            f"[{_pts(difference['low'])}, {_pts(difference['high'])}]")
    if sentiment["p_holm"] < settings.alpha and difference["low"] > 0:
        verdict, why = REPLICATED, "calibration changes sentiment accuracy beyond sampling, and more than reasoning"
    elif reasoning["p_holm"] < settings.alpha and difference["high"] < 0:
        verdict, why = CONTRADICTED, "reasoning spreads more than sentiment across calibration sets"
    else:
        verdict, why = NOT_DISTINGUISHABLE, ("the spread across calibration sets is not distinguishable from "
                                             "sampling, or sentiment's from reasoning's")
    estimate = {"value": difference["difference"], "low": difference["low"], "high": difference["high"],
                "unit": "excess spread, sentiment - reasoning (accuracy sd)"}
    tables = [table for group in groups.values() for table in group]
    return _judgement(verdict, why, ours, estimate, _accuracy_mde(tables, settings), rows)


def judge_c2(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    groups = {category: tables for category, tables in _by_category(evidence.tables("calibration")).items()
              if category in ("similarity", "reasoning")}
    if not groups:
        return _not_run(evidence, "needs similarity or reasoning tasks pruned with two calibration sets or more")
    margin = claim.margin or C2_DEFAULT_MARGIN
    rows, categories = _spread_rows(groups, settings)
    ours = "; ".join(f"{category}: excess spread {_pts(figures['spread'])} pts [{_pts(figures['low'])}, "
                     f"{_pts(figures['high'])}] (Holm p = {figures['p_holm']:.3g})"
                     for category, figures in categories.items())
    if any(figures["p_holm"] < settings.alpha for figures in categories.values()):
        verdict, why = CONTRADICTED, "calibration changes accuracy beyond sampling in a category claimed robust"
    elif all(figures["high"] < margin for figures in categories.values()):
        verdict, why = REPLICATED, f"every upper bound of the excess spread is under the margin of {_pts(margin)} pts"
    else:
        verdict, why = NOT_DISTINGUISHABLE, (f"no significant spread, but the interval reaches past the margin of "
                                             f"{_pts(margin)} pts: robustness is not shown at this n")
    worst = max(categories.values(), key=lambda figures: figures["high"])
    estimate = {"value": worst["spread"], "low": worst["low"], "high": worst["high"],
                "unit": "largest excess spread across calibration sets (accuracy sd)"}
    tables = [table for group in groups.values() for table in group]
    return _judgement(verdict, why, ours, estimate, _accuracy_mde(tables, settings), rows)


def sparsity_level(label: str) -> float:
    """'0.5' -> 0.5, '2:4' -> 0.5 (2 of every 4 weights kept)."""
    if ":" in label:
        kept, group = label.split(":")
        return 1 - int(kept) / int(group)
    return float(label)


def judge_c3(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    tables = [table for table in evidence.tables("sparsity", dense_as="0" if claim.grid.dense else None)
              if len(table.conditions) >= 2]
    if not tables:
        return _not_run(evidence, "needs two sparsities or more (or one and the dense model)")
    rows = []
    for table in tables:
        rows.append({"level": "task", "name": table.task, "category": table.category,
                     **trend_test(table, [sparsity_level(c) for c in table.conditions], settings.resamples,
                                  settings.seed),
                     "conditions": list(table.conditions)})
    for row, adjusted in zip(rows, holm([row["p_value"] for row in rows], settings.alpha), strict=True):
        row["p_holm"] = adjusted
    conditions = tables[0].conditions
    same = [table for table in tables if table.conditions == conditions]
    pooled_table = Outcomes("pooled", "all", conditions, np.concatenate([t.scores for t in same], axis=1))
    levels = [sparsity_level(c) for c in conditions]
    pooled = trend_test(pooled_table, levels, settings.resamples, settings.seed)
    pooled.update(trend_interval(pooled_table, levels, settings.resamples, settings.seed))
    rows.insert(0, {"level": "pooled", "name": f"{len(same)} task table(s)", **pooled, "conditions": list(conditions)})
    gains = [row["name"] for row in rows[1:] if row["p_holm"] < settings.alpha and row["slope"] > 0]
    ours = (f"pooled accuracy {' -> '.join(_pts(a) for a in pooled['accuracies'])} over sparsity "
            f"{' -> '.join(conditions)}: slope {_pts(pooled['slope'])} pts per unit sparsity "
            f"[{_pts(pooled['low'])}, {_pts(pooled['high'])}] (p = {pooled['p_value']:.3g})")
    if pooled["p_value"] < settings.alpha:
        verdict = REPLICATED if pooled["slope"] < 0 else CONTRADICTED
        why = "accuracy falls with sparsity" if pooled["slope"] < 0 else "accuracy rises with sparsity"
    else:
        verdict, why = NOT_DISTINGUISHABLE, "no trend over sparsity distinguishable from sampling"
    notes = [f"accuracy rises significantly with sparsity on {', '.join(gains)} (check the label bias below)"] \
        if gains else []
    span = max(levels) - min(levels)
    mde = _accuracy_mde(tables, settings)
    mde = {**mde, "value": mde["value"] / span, "unit": "accuracy points per unit sparsity (end to end)"}
    estimate = {"value": pooled["slope"], "low": pooled["low"], "high": pooled["high"],
                "unit": "accuracy per unit sparsity"}
    return _judgement(verdict, why, ours, estimate, mde, rows, notes)


def _contrast(tables: list[Outcomes], first: Callable[[str], bool], settings: Settings) -> tuple[dict, list[dict]]:
    """Per example, mean score under the conditions ``first`` picks minus under the others;
    pooled over tables, and per table."""
    rows, firsts, seconds = [], [], []
    for table in tables:
        pick = np.array([first(c) for c in table.conditions])
        if pick.all() or not pick.any():
            continue
        a, b = table.scores[pick].mean(axis=0), table.scores[~pick].mean(axis=0)
        rows.append({"level": "task", "name": table.task, "category": table.category,
                     **paired_difference(a, b, settings.resamples, settings.seed)})
        firsts.append(a)
        seconds.append(b)
    if not rows:
        return {}, []
    for row, adjusted in zip(rows, holm([row["p_value"] for row in rows], settings.alpha), strict=True):
        row["p_holm"] = adjusted
    pooled = paired_difference(np.concatenate(firsts), np.concatenate(seconds), settings.resamples, settings.seed)
    return pooled, rows


def _direction_verdict(pooled: dict, alpha: float, claim_text: str) -> tuple[str, str]:
    if pooled["p_value"] < alpha and pooled["low"] > 0:
        return REPLICATED, claim_text
    if pooled["p_value"] < alpha and pooled["high"] < 0:
        return CONTRADICTED, f"the opposite of: {claim_text}"
    return NOT_DISTINGUISHABLE, "the difference is not distinguishable from sampling"


def judge_c4(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    tables = evidence.tables("calibration")
    pooled, rows = _contrast(tables, lambda name: name in C4_BEST, settings)
    if not rows:
        return _not_run(evidence, "needs C4 or WikiText2 calibration (hub sets) next to others")
    verdict, why = _direction_verdict(pooled, settings.alpha, "C4/WikiText2 calibration gives higher accuracy")
    ours = (f"C4/WikiText2 minus other calibration sets: {_pts(pooled['difference'])} pts "
            f"[{_pts(pooled['low'])}, {_pts(pooled['high'])}] (p = {pooled['p_value']:.3g})")
    estimate = {"value": pooled["difference"], "low": pooled["low"], "high": pooled["high"], "unit": "accuracy"}
    return _judgement(verdict, why, ours, estimate, _accuracy_mde(tables, settings), [
        {"level": "pooled", "name": "all tasks", **pooled}, *rows])


def judge_c5(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    tables = [table for table in evidence.tables("seqlen") if len(table.conditions) >= 2]
    if not tables:
        return _not_run(evidence, "needs two calibration sequence lengths or more")
    rows = []
    for table in tables:
        lengths = [int(c) for c in table.conditions]
        short, long = table.scores[int(np.argmin(lengths))], table.scores[int(np.argmax(lengths))]
        task = table.task.split(" ")[0]
        rows.append({"level": "task", "name": table.task, "category": table.category,
                     "short": min(lengths), "long": max(lengths), "paper_better": C5_DIRECTIONS.get(task),
                     **paired_difference(short, long, settings.resamples, settings.seed)})
    for row, adjusted in zip(rows, holm([row["p_value"] for row in rows], settings.alpha), strict=True):
        row["p_holm"] = adjusted
    claimed = [row for row in rows if row["paper_better"]]
    if not claimed:
        return _not_run(evidence, f"needs a task the paper gives a direction for ({', '.join(C5_DIRECTIONS)})")

    def agrees(row: dict) -> bool:
        return (row["difference"] > 0) == (row["paper_better"] == "short")

    significant = [row for row in claimed if row["p_holm"] < settings.alpha]
    if significant and all(agrees(row) for row in significant) and len(significant) == len(claimed):
        verdict, why = REPLICATED, "every task the paper names moves in its direction, significantly"
    elif any(not agrees(row) for row in significant):
        verdict, why = CONTRADICTED, "a task moves significantly against the paper's direction"
    else:
        verdict, why = NOT_DISTINGUISHABLE, "sequence length makes no difference distinguishable from sampling"
    ours = "; ".join(f"{row['name']}: short - long {_pts(row['difference'])} pts [{_pts(row['low'])}, "
                     f"{_pts(row['high'])}] (Holm p = {row['p_holm']:.3g})" for row in claimed)
    first = claimed[0]
    estimate = {"value": first["difference"], "low": first["low"], "high": first["high"],
                "unit": f"accuracy, short - long seqlen ({first['name']})"}
    return _judgement(verdict, why, ours, estimate, _accuracy_mde(tables, settings), rows)


def _held_out_per_text(body: dict) -> tuple[list[float], list[dict]]:
    values, summaries = [], []
    for block in body["result"].get("comparison", []):
        statistics = block.get("statistics") or {}
        held = statistics.get("held_out")
        if not held:
            continue
        summaries.append({"variant": block["variant"], **held["excess_drop"]})
        values += [v for v in statistics["per_text"]["held_out"]["excess_drop"] if v is not None]
    return values, summaries


def judge_c6(evidence: ClaimEvidence, claim: Claim, settings: Settings) -> dict:
    per_category: dict[str, list[float]] = {}
    rows = []
    for request, body in evidence.nsa:
        values, summaries = _held_out_per_text(body)
        per_category.setdefault(request.category, []).extend(values)
        rows += [{"level": "request", "name": f"{request.dataset} ({request.category})", "result_id": body["id"],
                  "held_out_excess_drop": summary} for summary in summaries]
    sentiment = per_category.get("sentiment", [])
    others = [value for category, values in per_category.items() if category != "sentiment" for value in values]
    if len(sentiment) < 2 or len(others) < 2:
        return _not_run(evidence, "needs held-out NSA figures for sentiment and another category")
    compared = ", ".join(sorted(category for category in per_category if category != "sentiment"))
    difference = independent_difference(sentiment, others, settings.resamples, settings.seed)
    rows.append({"level": "comparison", "name": f"sentiment - ({compared})", **difference})
    if difference["p_value"] < settings.alpha and difference["low"] > 0:
        verdict, why = REPLICATED, f"influential words lose more activation in sentiment than in {compared}"
    elif difference["p_value"] < settings.alpha and difference["high"] < 0:
        verdict, why = CONTRADICTED, f"influential words lose more activation in {compared} than in sentiment"
    else:
        verdict, why = NOT_DISTINGUISHABLE, "the held-out excess drops of the categories are not distinguishable"
    notes = [] if "reasoning" in per_category else [
        f"no reasoning set has labelled NSA examples offline; sentiment is compared with {compared}"]
    ours = (f"held-out excess drop on influential words, sentiment - ({compared}): "
            f"{_pts(difference['difference'])} pts [{_pts(difference['low'])}, {_pts(difference['high'])}] "
            f"(p = {difference['p_value']:.3g}; sentiment mean {_pts(float(np.mean(sentiment)))}, "
            f"others {_pts(float(np.mean(others)))})")
    detectable = detectable_difference(sentiment, others, settings.alpha, settings.power)
    mde = {"value": detectable, "unit": "excess drop difference (fraction of activation)",
           "note": f"{len(sentiment)} vs {len(others)} texts, {settings.power:.0%} power"}
    estimate = {"value": difference["difference"], "low": difference["low"], "high": difference["high"],
                "unit": "held-out excess drop, sentiment - others"}
    return _judgement(verdict, why, ours, estimate, mde, rows, notes)


CLAIMS: dict[str, ClaimDefinition] = {claim.id: claim for claim in (
    ClaimDefinition("C1", "Calibration data changes pruned accuracy, sentiment most", "Tables 1, 2",
                    "OPT-6.7B + Wanda on Yelp: 74% with WikiText2 calibration vs ~60% with the others", judge_c1),
    ClaimDefinition("C2", "Semantic similarity and logical reasoning are robust to calibration data", "Table 1",
                    "MRPC, QQP, SciQ, WNLI change little across calibration sets", judge_c2),
    ClaimDefinition("C3", "Accuracy falls with sparsity (some tasks gain)", "Table 3",
                    "LLaMA-7B, RIA, C4: SciQ 94% -> 28% at sparsity 0.8; SciTail gains at higher sparsity", judge_c3),
    ClaimDefinition("C4", "C4 and WikiText2 calibration give the best pruned models", "Table 4",
                    "best for most models; WNLI and ARC-C calibration the worst", judge_c4),
    ClaimDefinition("C5", "Calibration sequence length matters per task", "Table 5",
                    "ARC better at seqlen 64 than 2048; MRPC better at 2048", judge_c5),
    ClaimDefinition("C6", "Sentiment loses activation on influential words more than reasoning",
                    "Section 4.2, Figure 1", "qualitative: sentiment words lose activation, ARC-C 'relatively stable'",
                    judge_c6),
)}
