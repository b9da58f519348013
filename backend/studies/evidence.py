"""What a claim is judged on: its grid run as a sweep (and NSA requests), read back from the stores.

Each claim's grid is one sweep (``backend.evaluation.sweep``) named after the study, profile and
claim. The sweep reuses existing variants and stored results, so cells shared by claims, or
computed by an earlier run, are never computed again. The per-example scores are then read from
the results store and laid out as ``claim_tests.Outcomes`` tables; NSA results are kept in the
NSA result store under the id of their request, and reused the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backend.errors import UserError
from backend.evaluation.registry import TASKS
from backend.evaluation.sweep import CellOutcome, SweepCell, SweepSpec, _base_name, run_sweep, sweep_cells
from backend.studies.claim_tests import Outcomes
from backend.studies.spec import Grid, NsaRequest, ResolvedStudy

Progress = Callable[[float, str], None]
AXES = ("calibration", "sparsity", "seqlen")


def sweep_for(study: ResolvedStudy, claim_id: str, grid: Grid) -> SweepSpec:
    settings = study.settings
    return SweepSpec(
        name=f"{study.name}-{study.profile}-{claim_id}", models=(settings.model,), tasks=grid.tasks,
        methods=grid.methods, calibrations=grid.calibrations, sparsities=grid.sparsities, seqlens=grid.seqlens,
        limit=settings.limit, nsamples=settings.nsamples, seed=settings.seed, dense=grid.dense,
        batch_size=settings.batch_size,
    )


@dataclass
class ClaimEvidence:
    """The cells of one claim's sweep and the per-example scores behind them."""

    sweep: SweepSpec
    cells: list[SweepCell]
    records: dict[str, dict]  # cell key -> the store's record (status, variant_id, error)
    scores: dict[tuple[str, str], dict[int, float]]  # (cell key, task) -> {doc id: 0/1}
    nsa: list[tuple[NsaRequest, dict]] = field(default_factory=list)  # request -> stored NSA body
    nsa_errors: list[str] = field(default_factory=list)
    excluded: frozenset[str] = frozenset()  # tasks the dense model is at chance on: no claim uses them

    def failures(self) -> list[str]:
        """One line per cell that did not finish (e.g. a calibration set that needs the hub)."""
        lines = [f"{key}: {record.get('error') or record['status']}" for key, record in self.records.items()
                 if record["status"] != "done"]
        return lines + self.nsa_errors

    def dense_scores(self, task: str) -> dict[int, float] | None:
        dense = [cell for cell in self.cells if cell.method is None]
        return self.scores.get((dense[0].key, task)) if dense else None

    def tables(self, axis: str, dense_as: str | None = None) -> list[Outcomes]:
        """Per (method, task, the other axes' values): the scores along ``axis`` (calibration,
        sparsity or seqlen), on the examples every condition has. ``dense_as``: a sparsity label
        under which the dense model joins each sparsity table (C3's sparsity 0)."""
        if axis not in AXES:
            raise ValueError(axis)
        groups: dict[tuple, list[SweepCell]] = {}
        for cell in self.cells:
            if cell.method is None:
                continue
            fixed = tuple((name, getattr(cell, name)) for name in AXES if name != axis)
            groups.setdefault((cell.method, fixed), []).append(cell)
        tables = []
        for (method, fixed), members in groups.items():
            for task in self.sweep.tasks:
                if task in self.excluded:
                    continue
                columns = [(str(getattr(cell, axis)), self.scores.get((cell.key, task))) for cell in members]
                dense = self.dense_scores(task)
                if dense_as is not None and dense is not None:
                    columns.insert(0, (dense_as, dense))
                present = [(name, scores) for name, scores in columns if scores]
                if len(present) < 2:
                    continue
                shared = sorted(set.intersection(*(set(scores) for _, scores in present)))
                if not shared:
                    continue
                matrix = np.array([[scores[doc] for doc in shared] for _, scores in present])  # [conditions, examples]
                label = f"{task} ({method}" + "".join(f", {value}" for _, value in fixed if value is not None) + ")"
                tables.append(Outcomes(label, TASKS[task].category, tuple(name for name, _ in present), matrix,
                                       tuple(shared)))
        return tables


def _acc_scores(store, model: str, variant_id: str, task: str, limit: int | None) -> dict[int, float] | None:
    from backend.evaluation.runner import DEFAULT_SAMPLE_SEED

    for result in store.results(base_model=_base_name(model), variant_id=variant_id, task=task):
        if result.stale or result.key.limit != limit:
            continue
        if limit is not None and result.key.sample_seed != DEFAULT_SAMPLE_SEED:
            continue
        outcomes = store.outcomes(result.key)
        if outcomes and "acc" in outcomes:
            return outcomes["acc"]
    return None


def read_evidence(sweep: SweepSpec, store=None) -> ClaimEvidence:
    """The claim's cells as the stores hold them now (nothing is computed)."""
    from backend.evaluation.store import DENSE, ResultsStore

    store = store or ResultsStore.from_settings()
    cells = sweep_cells(sweep)
    stored = store.cells(sweep.name)
    records = {cell.key: stored.get(cell.key, {"status": "missing", "variant_id": None, "error": None})
               for cell in cells}
    scores = {}
    for cell in cells:
        record = records[cell.key]
        if record["status"] != "done":
            continue
        variant_id = DENSE if cell.method is None else record["variant_id"]
        for task in sweep.tasks:
            found = _acc_scores(store, sweep.models[0], variant_id, task, sweep.limit)
            if found:
                scores[(cell.key, task)] = found
    return ClaimEvidence(sweep, cells, records, scores)


def run_claim_cells(sweep: SweepSpec, *, ray_address: str | None, progress: Progress | None) -> list[CellOutcome]:
    """The sweep's missing cells, computed (locally or on Ray); complete ones are skipped. A grid
    without tasks (NSA only) has its variants pruned here, each recorded as its sweep's cell."""
    if sweep.tasks:
        return run_sweep(sweep, ray_address=ray_address, progress=progress).outcomes
    from backend.evaluation.store import ResultsStore
    from backend.evaluation.sweep import _model_for, prune_for_cell

    store = ResultsStore.from_settings()
    outcomes = []
    for cell in sweep_cells(sweep):
        if cell.method is None or store.cells(sweep.name).get(cell.key, {}).get("status") == "done":
            continue
        try:
            variant_id = prune_for_cell(_model_for(cell.model), cell, sweep)
            outcome = CellOutcome(cell.key, "done", variant_id)
        except Exception as exc:  # noqa: BLE001 - recorded as the cell's error, like a sweep's cell
            outcome = CellOutcome(cell.key, "failed", error=(str(exc).splitlines() or [""])[0][:300])
        store.record_cell(sweep.name, cell.key, outcome.status, variant_id=outcome.variant_id, error=outcome.error)
        outcomes.append(outcome)
    return outcomes


def nsa_request_body(model: str, request: NsaRequest, variants: list[str], seed: int, resamples: int) -> dict:
    """What identifies an NSA run of a study: the texts themselves, so the id changes with them."""
    from backend.nsa.service import dataset_examples

    examples = dataset_examples(request.dataset, request.n, seed)
    return {"model": model, "texts": [ex["text"] for ex in examples],
            "labels": [str(ex["label_text"]) for ex in examples], "words": None, "task": request.task,
            "variants": variants, "top_k": request.top_k, "ablate": False, "patch": False, "split": True,
            "seed": seed, "resamples": resamples, "origin": "study"}


def run_nsa_requests(evidence: ClaimEvidence, study: ResolvedStudy, grid: Grid, *, compute: bool,
                     progress: Progress | None = None) -> None:
    """NSA for each request of the grid against the grid's variants: a stored result (same request,
    same NSA code) is read back, a missing one computed and stored when ``compute``."""
    if not grid.nsa:
        return
    from backend.config import get_settings
    from backend.nsa.results_store import NsaResultStore, request_id

    variants = [record["variant_id"] for cell in evidence.cells if cell.method is not None
                for record in [evidence.records[cell.key]] if record["status"] == "done" and record["variant_id"]]
    if not variants:
        evidence.nsa_errors.append("NSA: no pruned variant of this claim's grid finished")
        return
    store = NsaResultStore(get_settings().nsa_db)
    loaded = None
    try:
        for index, request in enumerate(grid.nsa):
            try:
                body = nsa_request_body(_base_name(study.settings.model), request, variants, study.settings.seed,
                                        study.settings.resamples)
            except UserError as exc:
                evidence.nsa_errors.append(f"NSA {request.dataset}: {exc}")
                continue
            result_id = request_id(body)
            stored = store.get_bytes(result_id)
            if stored is None and compute:
                from backend.models.loader import load_model
                from backend.nsa.service import attribute

                if progress:
                    progress(index / len(grid.nsa), f"NSA on {request.n} {request.dataset} texts")
                loaded = loaded or load_model(study.settings.model)
                texts = [{"text": text, "label_text": label} for text, label in zip(body["texts"], body["labels"],
                                                                                    strict=True)]
                result = attribute(loaded, texts, task=request.task, variants=variants, top_k=request.top_k,
                                   seed=study.settings.seed, resamples=study.settings.resamples)
                stored = store.put(result_id, body, result)
            if stored is None:
                evidence.nsa_errors.append(f"NSA {request.dataset}: not computed yet")
                continue
            evidence.nsa.append((request, json.loads(stored)))
    finally:
        store.close()
