"""The paper's accuracy tables, computed from the results store: Markdown, CSV or JSON (for plots).

Every table is a mean of one lm-eval metric (``acc,none`` by default) over the stored results that
fall in a cell; whatever is neither a row, a column nor a filter is averaged over. The dense
model's results have method, calibration, sparsity and seqlen ``dense``, so they show up as their
own column (or row). A cell without results is missing - shown as ``—`` / an empty CSV field,
never as zero.

Each cell carries a 95% interval: mean ± z·(mean of the results' lm-eval stderrs), which bounds the
stderr of a mean of correlated accuracies from above (exact for one result). Given the results'
per-example scores, each variant cell also carries its paired difference to the dense model on the
same examples (see backend.evaluation.paired), "not distinguishable" when its interval holds 0.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backend.errors import UserError
from backend.evaluation.paired import Outcomes, difference_to_dense
from backend.evaluation.registry import CATEGORIES, TASKS
from backend.evaluation.store import StoredResult
from backend.evaluation.uncertainty import NOT_DISTINGUISHABLE, PairedDifference, normal_interval

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
    intervals: list[list[tuple[float, float] | None]]  # 95% interval per cell (None: no stderr)
    differences: list[list[PairedDifference | None]]  # paired difference to dense per cell

    def _grid(self, title: str, cell: Callable[[int, int], str]) -> list[str]:
        lines = [title, "", "| " + " | ".join([self.row_header, *self.columns]) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(self.columns)) + "|"]
        for row, (label, _values) in enumerate(self.rows):
            lines.append("| " + " | ".join([label, *(cell(row, column) for column in range(len(self.columns)))])
                         + " |")
        return lines

    def to_markdown(self, *, percent: bool = True) -> str:
        scale = 100.0 if percent else 1.0
        digits = 2 if percent else 4

        def cell(row: int, column: int) -> str:
            value, interval = self.rows[row][1][column], self.intervals[row][column]
            if value is None:
                return MISSING_MARKDOWN
            text = f"{value * scale:.{digits}f}"
            if interval is not None:
                text += f" [{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"
            return text

        def difference(row: int, column: int) -> str:
            found = self.differences[row][column]
            return MISSING_MARKDOWN if found is None else found.describe(scale)

        title = f"{self.kind}: mean {self.metric}" + (" (%)" if percent else "") + ", 95% interval"
        filters = ", ".join(f"{key}={value}" for key, value in self.filters.items() if value is not None)
        lines = self._grid(f"**{title}**" + (f" — {filters}" if filters else ""), cell)
        if any(found for row in self.differences for found in row):
            lines += [""] + self._grid(
                "**Difference to dense on the same examples: paired 95% bootstrap interval, p-value "
                f"(McNemar for one variant); '{NOT_DISTINGUISHABLE}' when the interval holds 0**", difference)
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """One column per table column, then per column its interval and paired difference to dense."""
        extras = ("low", "high", "diff to dense", "diff low", "diff high", "diff p", "diff verdict")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([self.row_header, *self.columns,
                         *(f"{column} {extra}" for column in self.columns for extra in extras)])
        for row, (label, values) in enumerate(self.rows):
            details: list[str | float] = []  # "" for a missing interval or difference
            for interval, found in zip(self.intervals[row], self.differences[row], strict=True):
                details += list(interval) if interval else ["", ""]
                details += ([found.difference, found.low, found.high, found.p_value, found.verdict] if found
                            else [""] * 5)
            writer.writerow([label, *("" if v is None else repr(v) for v in values),
                             *("" if v == "" else (v if isinstance(v, str) else repr(float(v))) for v in details)])
        return buffer.getvalue()

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "row_header": self.row_header,
            "columns": self.columns,
            "rows": [{"label": label, "values": values, "counts": counts,
                      "intervals": [list(interval) if interval else None for interval in intervals],
                      "differences": [found.to_json() if found else None for found in differences]}
                     for (label, values), counts, intervals, differences
                     in zip(self.rows, self.counts, self.intervals, self.differences, strict=True)],
            "filters": self.filters,
        }


def latest_results(results: Iterable[StoredResult], num_fewshot: int = 0) -> list[StoredResult]:
    """One current result per (model, variant, task) among those scored with ``num_fewshot``
    demonstrations (a 0-shot and a 5-shot score never share a table): the one on the most
    examples, then the newest, so a quick ``--limit`` run never dilutes a full one. Stale results
    (computed by other evaluation code) are left out."""
    best: dict[tuple, StoredResult] = {}
    for result in results:
        if result.stale or result.key.num_fewshot != num_fewshot:
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
    outcomes: Outcomes | None = None,
    num_fewshot: int = 0,
) -> Table:
    """The table ``kind`` (see TABLE_KINDS) from stored results, after the given filters, of the
    results scored with ``num_fewshot`` demonstrations.
    ``outcomes`` (a store's ``outcomes``) gives the per-example scores for paired differences."""
    if kind not in TABLE_KINDS:
        raise UserError(f"unknown table {kind!r}; choose from {', '.join(TABLE_KINDS)}")
    spec = TABLE_KINDS[kind]
    if spec.needs_task and task is None:
        raise UserError(f"table {kind} is for one task: pass --task (e.g. --task sst2)")
    if task is not None and task not in TASKS:
        raise UserError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    filters = {"model": model, "task": task, "method": method, "calibration": calibration,
               "sparsity": sparsity, "seqlen": None if seqlen is None else str(seqlen)}

    cells: dict[tuple[str, str], list[StoredResult]] = defaultdict(list)
    for result in latest_results(results, num_fewshot):
        if any(value is not None and _dimension_value(result, dimension) != value
               for dimension, value in filters.items()):
            continue
        value = result.metric(metric)
        row, column = _dimension_value(result, spec.rows), _dimension_value(result, spec.columns)
        if value is None or math.isnan(value) or row is None or column is None:
            continue
        cells[row, column].append(result)

    row_labels = sorted({row for row, _ in cells}, key=_SORT_KEYS[spec.rows])
    column_labels = sorted({column for _, column in cells}, key=_SORT_KEYS[spec.columns])
    grid = [[cells.get((label, column), []) for column in column_labels] for label in row_labels]
    rows = [(label, [_mean(_metric_values(cell, metric)) for cell in line])
            for label, line in zip(row_labels, grid, strict=True)]
    intervals = [[_cell_interval(cell, metric) for cell in line] for line in grid]
    differences = [[difference_to_dense(cell, outcomes, metric) if outcomes and cell else None for cell in line]
                   for line in grid]
    cell_counts = [[len(cell) for cell in line] for line in grid]
    shown_filters = filters | ({"num_fewshot": str(num_fewshot)} if num_fewshot else {})
    return Table(kind, metric, spec.rows, column_labels, rows, cell_counts, shown_filters, intervals, differences)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _metric_values(cell: list[StoredResult], metric: str) -> list[float]:
    """The cell's values of ``metric``; a cell only holds results that have it (see above)."""
    return [value for result in cell if (value := result.metric(metric)) is not None]


def _cell_interval(cell: list[StoredResult], metric: str) -> tuple[float, float] | None:
    """mean ± z·mean(stderr): the stderr of a mean of k accuracies is at most the mean of their
    stderrs whatever their correlation (results on the same examples are correlated)."""
    stderrs = [stderr for result in cell if (stderr := result.stderr(metric)) is not None
               and not math.isnan(stderr)]
    if not cell or len(stderrs) != len(cell):
        return None
    values = _metric_values(cell, metric)
    return normal_interval(sum(values) / len(values), sum(stderrs) / len(stderrs))
