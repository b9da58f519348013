"""The paper's accuracy tables, computed from the results store: Markdown, CSV or JSON (for plots).

Every table is a mean of one lm-eval metric (``acc,none`` by default) over the stored results that
fall in a cell; whatever is neither a row, a column nor a filter is averaged over. The dense
model's results have method, calibration, sparsity and seqlen ``dense``, so they show up as their
own column (or row). A cell without results is missing - shown as ``—`` / an empty CSV field,
never as zero.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backend.errors import UserError
from backend.evaluation.registry import CATEGORIES, TASKS
from backend.evaluation.store import StoredResult

DENSE_LABEL = "dense"
MISSING_MARKDOWN = "—"
# The paper's order of calibration sets and methods; others follow alphabetically.
CALIBRATION_ORDER = ("c4", "wikitext2", "ptb", "arc_challenge", "arc_easy", "boolq", "rte", "sst2", "wnli")
METHOD_ORDER = ("magnitude", "wanda", "sparsegpt", "ria", "mi")


def _sparsity_sort_key(label: str) -> tuple:
    """'0.5' -> 0.5, '2:4' -> 0.5 (fraction removed), 'neurons:0.2' -> 0.2; unstructured first."""
    try:
        if label.startswith("neurons:"):
            return (2, float(label.split(":", 1)[1]), label)
        if ":" in label:
            n, m = (int(part) for part in label.split(":"))
            return (1, 1 - n / m, label)
        return (0, float(label), label)
    except ValueError:
        return (3, 0.0, label)


def _seqlen_sort_key(label: str) -> tuple:
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def _ordered(preferred: Iterable[str]) -> Callable[[str], tuple]:
    rank = {name: index for index, name in enumerate(preferred)}
    return lambda label: (rank.get(label, len(rank)), label)


# dimension -> (value of a result, sort key of its labels)
def _dimension_value(result: StoredResult, dimension: str) -> str | None:
    variant = result.variant
    if dimension == "task":
        return result.key.task
    if dimension == "category":
        task = TASKS.get(result.key.task)
        return task.category if task else None
    if dimension == "model":
        return result.key.base_model
    if variant is None:
        return DENSE_LABEL
    value = variant.get(dimension)
    return None if value is None else str(value)


_SORT_KEYS: dict[str, Callable[[str], tuple]] = {
    "task": _ordered(TASKS),
    "category": _ordered(CATEGORIES),
    "model": lambda label: (label,),
    "method": _ordered((DENSE_LABEL, *METHOD_ORDER)),
    "calibration": _ordered((DENSE_LABEL, *CALIBRATION_ORDER)),
    "sparsity": lambda label: (-1,) if label == DENSE_LABEL else _sparsity_sort_key(label),
    "seqlen": lambda label: (-1,) if label == DENSE_LABEL else _seqlen_sort_key(label),
}


@dataclass(frozen=True)
class TableKind:
    rows: str
    columns: str
    description: str
    needs_task: bool = False


TABLE_KINDS: dict[str, TableKind] = {
    "task-calibration": TableKind("task", "calibration", "tasks x calibration sets, mean over methods and sparsities"),
    "model-calibration": TableKind("model", "calibration", "models x calibration sets for one task (--task)",
                                   needs_task=True),
    "task-sparsity": TableKind("task", "sparsity", "tasks x sparsities, mean over methods and calibration sets"),
    "task-seqlen": TableKind("task", "seqlen", "tasks x calibration sequence lengths"),
    "method-calibration": TableKind("method", "calibration", "methods x calibration sets, mean over tasks"),
    "category-calibration": TableKind("category", "calibration", "task categories x calibration sets"),
}


@dataclass
class Table:
    kind: str
    metric: str
    row_header: str
    columns: list[str]
    rows: list[tuple[str, list[float | None]]]  # (row label, one value per column; None = missing)
    counts: list[list[int]]  # results averaged in each cell
    filters: dict

    def to_markdown(self, *, percent: bool = True) -> str:
        def cell(value: float | None) -> str:
            if value is None:
                return MISSING_MARKDOWN
            return f"{value * 100:.2f}" if percent else f"{value:.4f}"

        title = f"{self.kind}: mean {self.metric}" + (" (%)" if percent else "")
        filters = ", ".join(f"{key}={value}" for key, value in self.filters.items() if value is not None)
        lines = [f"**{title}**" + (f" — {filters}" if filters else ""), ""]
        header = [self.row_header, *self.columns]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|")
        for label, values in self.rows:
            lines.append("| " + " | ".join([label, *(cell(v) for v in values)]) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([self.row_header, *self.columns])
        for label, values in self.rows:
            writer.writerow([label, *("" if v is None else repr(v) for v in values)])
        return buffer.getvalue()

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "row_header": self.row_header,
            "columns": self.columns,
            "rows": [{"label": label, "values": values, "counts": counts}
                     for (label, values), counts in zip(self.rows, self.counts, strict=True)],
            "filters": self.filters,
        }


def latest_results(results: Iterable[StoredResult]) -> list[StoredResult]:
    """One current result per (model, variant, task): the one on the most examples, then the
    newest, so a quick ``--limit`` run never dilutes a full one. Stale results (computed by other
    evaluation code) are left out."""
    best: dict[tuple, StoredResult] = {}
    for result in results:
        if result.stale:
            continue
        slot = (result.key.base_model, result.key.variant_id, result.key.task)
        current = best.get(slot)
        if current is None or (result.n_examples, result.created_at) > (current.n_examples, current.created_at):
            best[slot] = result
    return list(best.values())


def build_table(
    kind: str,
    results: Iterable[StoredResult],
    *,
    metric: str = "acc,none",
    model: str | None = None,
    task: str | None = None,
    method: str | None = None,
    calibration: str | None = None,
    sparsity: str | None = None,
    seqlen: str | int | None = None,
) -> Table:
    """The table ``kind`` (see TABLE_KINDS) from stored results, after the given filters."""
    if kind not in TABLE_KINDS:
        raise UserError(f"unknown table {kind!r}; choose from {', '.join(TABLE_KINDS)}")
    spec = TABLE_KINDS[kind]
    if spec.needs_task and task is None:
        raise UserError(f"table {kind} is for one task: pass --task (e.g. --task sst2)")
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    filters = {"model": model, "task": task, "method": method, "calibration": calibration,
               "sparsity": sparsity, "seqlen": None if seqlen is None else str(seqlen)}

    sums: dict[tuple[str, str], float] = defaultdict(float)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for result in latest_results(results):
        if any(value is not None and _dimension_value(result, dimension) != value
               for dimension, value in filters.items()):
            continue
        value = result.metric(metric)
        row, column = _dimension_value(result, spec.rows), _dimension_value(result, spec.columns)
        if value is None or math.isnan(value) or row is None or column is None:
            continue
        sums[row, column] += value
        counts[row, column] += 1

    row_labels = sorted({row for row, _ in counts}, key=_SORT_KEYS[spec.rows])
    column_labels = sorted({column for _, column in counts}, key=_SORT_KEYS[spec.columns])
    rows = [(label, [sums[label, column] / counts[label, column] if counts.get((label, column)) else None
                     for column in column_labels]) for label in row_labels]
    cell_counts = [[counts.get((label, column), 0) for column in column_labels] for label in row_labels]
    return Table(kind, metric, spec.rows, column_labels, rows, cell_counts, filters)
