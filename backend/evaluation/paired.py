"""Variants against the dense model on the same examples: pairs stored results with the dense result
of the same task, limit and sample seed, and turns their per-example scores into a paired difference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from backend.evaluation.store import DENSE, ResultKey, ResultsStore, StoredResult
from backend.evaluation.uncertainty import (
    PairedDifference,
    normal_interval,
    paired_difference,
    paired_vectors,
)

Outcomes = Callable[[ResultKey], "dict[str, dict[int, float]] | None"]


def per_example_name(metric: str) -> str | None:
    """``acc,none`` -> ``acc``: the name lm-eval logs each example's score under (filter none only)."""
    name, _, filter_name = metric.partition(",")
    return name if filter_name in ("", "none") else None


def dense_key(key: ResultKey) -> ResultKey:
    """The dense model's result on the same examples as ``key``."""
    return replace(key, variant_id=DENSE)


def difference_to_dense(results: Sequence[StoredResult], outcomes: Outcomes,
                        metric: str = "acc,none") -> PairedDifference | None:
    """mean(metric of ``results``) − mean(metric of their dense counterparts), paired per example.

    Results are grouped by what they were scored on (model, task, examples): per group, the
    per-example mean over its variants minus the dense score; groups weigh by their number of
    results, like the table cell's mean. None when a result is dense, or a result or its dense
    counterpart has no per-example scores for ``metric``.
    """
    name = per_example_name(metric)
    if name is None or not results or any(result.key.variant_id == DENSE for result in results):
        return None
    groups: dict[ResultKey, list[dict[int, float]]] = defaultdict(list)
    for result in results:
        scores = (outcomes(result.key) or {}).get(name)
        if scores is None:
            return None
        groups[dense_key(result.key)].append(scores)
    strata, weights = [], []
    for reference_key, variant_scores in groups.items():
        reference = (outcomes(reference_key) or {}).get(name)
        if reference is None:
            return None
        shared = set(reference).intersection(*variant_scores)
        if not shared:
            return None
        dense_vector, _ = paired_vectors(reference, dict.fromkeys(shared, 0.0))
        variant_vectors = [paired_vectors(reference, {doc: scores[doc] for doc in shared})[1]
                           for scores in variant_scores]
        strata.append((dense_vector, np.mean(variant_vectors, axis=0)))  # [examples] each
        weights.append(len(variant_scores) / len(results))
    return paired_difference(strata, weights)


def compare_to_dense(store: ResultsStore, base_model: str, variant_id: str,
                     metric: str = "acc,none") -> list[dict]:
    """Per task the variant was evaluated on: its accuracy and the dense one on the same examples,
    each with its 95% interval, and their paired difference (None where it cannot be paired)."""
    rows = []
    for result in store.results(base_model=base_model, variant_id=variant_id):
        value, stderr = result.metric(metric), result.stderr(metric)
        if value is None:
            continue
        dense = store.get(dense_key(result.key))
        dense_value = dense.metric(metric) if dense else None
        dense_stderr = dense.stderr(metric) if dense else None
        difference = difference_to_dense([result], store.outcomes, metric) if dense else None
        rows.append({
            "task": result.key.task,
            "limit": result.key.limit,
            "sample_seed": result.key.sample_seed,
            "num_fewshot": result.key.num_fewshot,
            "n_examples": result.n_examples,
            "metric": metric,
            "variant": value,
            "variant_interval": None if stderr is None else list(normal_interval(value, stderr)),
            "dense": dense_value,
            "dense_interval": (None if dense_value is None or dense_stderr is None
                               else list(normal_interval(dense_value, dense_stderr))),
            "difference": difference.to_json() if difference else None,
        })
    return rows
