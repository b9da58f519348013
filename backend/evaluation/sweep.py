"""Sweeps: models x methods x calibration sets x sparsities x seqlens, each cell pruned and evaluated.

A cell = prune (an existing variant with the same configuration is reused) + evaluate every task
(stored results are reused). Cells run in this process by default, or as Ray tasks (one GPU each
when the cluster has GPUs). The store records each cell's outcome, so a sweep that was killed
does only its missing cells when run again, and a failing cell is recorded with its error while
the others go on. Results are written by whoever computes them, straight into the results store:
on a multi-node cluster, point PRUNELENS_CACHE_DIR and PRUNELENS_RESULTS_URL at shared storage.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backend.errors import UserError
from backend.spec_files import read_yaml_file

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

Progress = Callable[[float, str], None]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_LIST_KEYS = ("models", "methods", "calibrations", "sparsities", "seqlens", "tasks")
_SCALAR_KEYS = ("name", "limit", "nsamples", "seed", "dense", "batch_size", "num_fewshot")


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep covers; read from YAML with ``load_sweep_spec``."""

    name: str
    models: tuple[str, ...]
    tasks: tuple[str, ...]
    methods: tuple[str, ...] = ()
    calibrations: tuple[str, ...] = ("c4",)
    sparsities: tuple[str, ...] = ("0.5",)
    seqlens: tuple[int, ...] = (2048,)
    limit: int | None = None
    nsamples: int = 128
    seed: int = 0
    dense: bool = True  # also evaluate each dense model
    batch_size: int = 16
    num_fewshot: int = 0  # demonstrations before each example, for every task ...
    task_fewshot: tuple[tuple[str, int], ...] = ()  # ... except these (task, shots)

    def shots(self, task: str) -> int:
        return dict(self.task_fewshot).get(task, self.num_fewshot)

    def fewshot(self) -> dict[str, int]:
        """Shots per task of the sweep, as ``evaluate`` takes them."""
        return {task: self.shots(task) for task in self.tasks}


@dataclass(frozen=True)
class SweepCell:
    """One point of the grid; ``method`` None is the dense model. Methods that use no calibration
    data (magnitude) have calibration and seqlen None: one cell, not one per calibration set."""

    model: str
    method: str | None = None
    calibration: str | None = None
    sparsity: str | None = None
    seqlen: int | None = None
    nsamples: int | None = None
    seed: int | None = None

    @property
    def key(self) -> str:
        if self.method is None:
            return f"{self.model}|dense"
        parts = [self.model, self.method, self.calibration or "-", self.sparsity or "-",
                 str(self.seqlen or "-"), f"n{self.nsamples}", f"seed{self.seed}"]
        return "|".join(parts)


@dataclass
class CellOutcome:
    cell: str
    status: str  # "done" | "failed"
    variant_id: str | None = None
    error: str | None = None
    computed: int = 0  # task results computed by this run
    reused: int = 0  # task results found in the store
    seconds: float = 0.0
    results: list[dict] = field(default_factory=list)
    worker: dict | None = None  # on Ray: the node id and process id that ran it


@dataclass
class SweepReport:
    name: str
    cells: int
    skipped: int  # complete before this run
    outcomes: list[CellOutcome]

    @property
    def failed(self) -> list[CellOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    def to_json(self) -> dict:
        return {"name": self.name, "cells": self.cells, "skipped": self.skipped,
                "done": sum(o.status == "done" for o in self.outcomes), "failed": len(self.failed),
                "outcomes": [asdict(o) for o in self.outcomes]}


# --------------------------------------------------------------------------- the spec


def _as_list(data: dict, key: str, default: tuple = ()) -> list:
    value = data.get(key, list(default))
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"sweep spec: {what} must be a positive integer, got {value!r}")
    return value


def parse_sweep_spec(data, default_name: str = "sweep") -> SweepSpec:
    """Validate a sweep spec mapping; every problem is one UserError line naming the field."""
    from backend.evaluation.registry import parse_task_names

    if not isinstance(data, dict):
        raise UserError("sweep spec: expected a mapping of keys (models, methods, tasks, ...)")
    unknown = sorted(set(data) - set(_LIST_KEYS) - set(_SCALAR_KEYS))
    if unknown:
        raise UserError(f"sweep spec: unknown key(s) {', '.join(unknown)}; "
                        f"expected {', '.join(_LIST_KEYS + _SCALAR_KEYS)}")
    name = str(data.get("name") or default_name)
    if not _NAME.match(name):
        raise UserError(f"sweep spec: name {name!r} must be letters, digits, '.', '-', '_'")
    models = [str(m).strip() for m in _as_list(data, "models")]
    if not models or not all(models):
        raise UserError("sweep spec: 'models' must name at least one model")
    tasks = parse_task_names([str(t) for t in _as_list(data, "tasks")])
    methods = [str(m).strip() for m in _as_list(data, "methods")]
    dense = data.get("dense", True)
    if not isinstance(dense, bool):
        raise UserError(f"sweep spec: 'dense' must be true or false, got {dense!r}")
    if not methods and not dense:
        raise UserError("sweep spec: nothing to run (no methods and dense: false)")
    if methods:
        from backend.pruning.registry import methods as registered

        bad = [m for m in methods if m not in registered()]
        if bad:
            raise UserError(f"sweep spec: unknown method(s) {', '.join(bad)}; choose from {', '.join(registered())}")
    sparsities = [str(s).strip() for s in _as_list(data, "sparsities", ("0.5",))]
    if methods:
        from backend.pruning.spec import SparsitySpec

        sparsities = [SparsitySpec.parse(s).label for s in sparsities]  # UserError names a bad one
    calibrations = [str(c).strip() for c in _as_list(data, "calibrations", ("c4",))]
    if methods and (not calibrations or not all(calibrations)):
        raise UserError("sweep spec: 'calibrations' must name at least one calibration set")
    seqlens = [_positive_int(s, "each seqlen") for s in _as_list(data, "seqlens", (2048,))]
    num_fewshot, task_fewshot = parse_fewshot(data.get("num_fewshot", 0), "sweep spec: num_fewshot")
    return SweepSpec(
        name=name, models=tuple(dict.fromkeys(models)), tasks=tuple(tasks), methods=tuple(dict.fromkeys(methods)),
        calibrations=tuple(dict.fromkeys(calibrations)), sparsities=tuple(dict.fromkeys(sparsities)),
        seqlens=tuple(dict.fromkeys(seqlens)),
        limit=None if data.get("limit") is None else _positive_int(data["limit"], "limit"),
        nsamples=_positive_int(data.get("nsamples", 128), "nsamples"),
        seed=_nonnegative_int(data.get("seed", 0)),
        dense=dense,
        batch_size=_positive_int(data.get("batch_size", 16), "batch_size"),
        num_fewshot=num_fewshot, task_fewshot=task_fewshot,
    )


def parse_fewshot(value, what: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``5`` (every task) or ``{sst2: 5, copa: 0}`` (named tasks; the others 0) -> (shots for every
    task, per-task exceptions)."""
    from backend.evaluation.registry import TASKS
    from backend.evaluation.runner import check_fewshot

    if isinstance(value, dict):
        counts = {str(task): count for task, count in value.items()}
        unknown = [task for task in counts if task not in TASKS]
        if unknown:
            raise UserError(f"{what}: unknown task {unknown[0]!r}")
        try:
            check_fewshot(counts)
        except UserError as exc:
            raise UserError(f"{what}: {exc}") from None
        return 0, tuple(sorted(counts.items()))
    try:
        check_fewshot(value)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None
    return value, ()


def _nonnegative_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"sweep spec: seed must be a non-negative integer, got {value!r}")
    return value


def load_sweep_spec(path: str | Path) -> SweepSpec:
    data, location = read_yaml_file(path, "sweep spec")
    return parse_sweep_spec(data, default_name=location.stem)


def sweep_cells(spec: SweepSpec) -> list[SweepCell]:
    """The grid, in a stable order. Structured methods (mi) pair only with 'neurons:' sparsities,
    weight methods with the others; methods without calibration get one cell per sparsity."""
    cells: list[SweepCell] = []
    for model in spec.models:
        if spec.dense:
            cells.append(SweepCell(model))
        if not spec.methods:
            continue
        from backend.pruning.registry import get_method

        for method in spec.methods:
            info = get_method(method)
            sparsities = [s for s in spec.sparsities if s.startswith("neurons:") == info.structured]
            if info.needs_calibration:
                grid = itertools.product(spec.calibrations, sparsities, spec.seqlens)
                cells += [SweepCell(model, method, calibration, sparsity, seqlen, spec.nsamples, spec.seed)
                          for calibration, sparsity, seqlen in grid]
            else:
                cells += [SweepCell(model, method, None, sparsity) for sparsity in sparsities]
    return list(dict.fromkeys(cells))


# --------------------------------------------------------------------------- one cell

_MODEL_CACHE: dict[str, object] = {}  # the last model a process loaded: cells of a model reuse it


def _model_for(reference: str):
    if reference not in _MODEL_CACHE:
        from backend.models.loader import load_model

        _MODEL_CACHE.clear()  # one model at a time: a worker must not hoard GPU memory
        _MODEL_CACHE[reference] = load_model(reference)
    return _MODEL_CACHE[reference]


def prune_for_cell(loaded: LoadedModel, cell: SweepCell, spec: SweepSpec) -> str:
    """The prune step of a cell, as one call: the variant id (existing variants are reused)."""
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec

    assert cell.method is not None and cell.sparsity is not None, "a dense cell is not pruned"
    config = PruneConfig(
        method=cell.method,
        calibration=cell.calibration or spec.calibrations[0],  # ignored by methods without data
        spec=SparsitySpec.parse(cell.sparsity),
        nsamples=spec.nsamples,
        seqlen=cell.seqlen or spec.seqlens[0],
        seed=spec.seed,
    )
    return create_variant(loaded, config).variant_id


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return text if isinstance(exc, UserError) else f"{exc.__class__.__name__}: {text}"


def run_cell(cell: SweepCell, spec: SweepSpec, progress: Progress | None = None) -> CellOutcome:
    """Prune and evaluate one cell; any error becomes a failed outcome (never an exception).
    ``progress``: the evaluation's progress (``evaluate``), called after the prune.
    On Ray, the worker's environment (``sweep_ray.worker_environment``) names the cache and results."""
    from backend.evaluation.runner import evaluate
    from backend.evaluation.store import ResultsStore

    started = time.perf_counter()
    variant_id = None
    try:
        loaded = _model_for(cell.model)
        if cell.method is not None:
            variant_id = prune_for_cell(loaded, cell, spec)
        results = evaluate(loaded, list(spec.tasks), variant_id=variant_id, limit=spec.limit,
                           batch_size=spec.batch_size, store=ResultsStore.from_settings(),
                           num_fewshot=spec.fewshot(), progress=progress)
    except Exception as exc:  # noqa: BLE001 - a failing cell must not stop the sweep
        return CellOutcome(cell.key, "failed", variant_id, _one_line(exc),
                           seconds=time.perf_counter() - started)
    return CellOutcome(
        cell.key, "done", variant_id,
        computed=sum(not r.reused for r in results), reused=sum(r.reused for r in results),
        seconds=time.perf_counter() - started,
        results=[{"task": r.task, "metrics": r.stored.metrics, "n_examples": r.stored.n_examples}
                 for r in results],
    )


# --------------------------------------------------------------------------- the sweep


def _cell_complete(store, spec: SweepSpec, cell: SweepCell, record: dict | None) -> bool:
    """Done in an earlier run, and every task of the spec still has a result with its limit and
    its number of demonstrations."""
    if not record or record["status"] != "done":
        return False
    from backend.evaluation.runner import DEFAULT_SAMPLE_SEED
    from backend.evaluation.store import DENSE, ResultKey

    variant_id = record["variant_id"] or DENSE
    wanted = ResultKey("", "", "", spec.limit, "", "", DEFAULT_SAMPLE_SEED).row()[3:5]  # (limit, seed)
    stored = store.results(base_model=_base_name(cell.model), variant_id=variant_id)
    have = {r.key.task for r in stored
            if not r.stale and r.key.row()[3:5] == wanted and r.key.num_fewshot == spec.shots(r.key.task)}
    return set(spec.tasks) <= have


def _base_name(reference: str) -> str:
    """The name a model is stored under (load_model resolves local folders to absolute paths)."""
    from backend.models.loader import parse_model_ref

    try:
        return parse_model_ref(reference).name
    except UserError:
        return reference


def run_sweep(
    spec: SweepSpec,
    *,
    ray_address: str | None = None,
    progress: Progress | None = None,
    show_bar: bool = False,
) -> SweepReport:
    """Run the cells not complete yet, locally or on Ray (``ray_address``: an address, 'auto', or
    'local' for a Ray instance started here). Each outcome is recorded as soon as it arrives."""
    from backend.evaluation.store import ResultsStore

    store = ResultsStore.from_settings()
    cells = sweep_cells(spec)
    records = store.cells(spec.name)
    todo = [cell for cell in cells if not _cell_complete(store, spec, cell, records.get(cell.key))]
    report = SweepReport(spec.name, len(cells), len(cells) - len(todo), [])
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), initial=report.skipped, desc=f"sweep {spec.name}", unit="cell",
                   file=sys.stderr)

    def record(outcome: CellOutcome) -> None:
        store.record_cell(spec.name, outcome.cell, outcome.status, variant_id=outcome.variant_id,
                          error=outcome.error, detail={"computed": outcome.computed, "reused": outcome.reused,
                                                       "seconds": round(outcome.seconds, 3),
                                                       **({"worker": outcome.worker} if outcome.worker else {})})
        report.outcomes.append(outcome)
        finished = report.skipped + len(report.outcomes)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{len(report.failed)} failed", refresh=True)
        if progress:
            progress(finished / max(len(cells), 1), f"{outcome.status}: {outcome.cell}")

    try:
        if ray_address:
            from backend.evaluation.sweep_ray import run_cells_on_ray

            run_cells_on_ray(todo, spec, ray_address, record)
        else:
            for cell in todo:
                record(run_cell(cell, spec))
    finally:
        if bar is not None:
            bar.close()
    return report
