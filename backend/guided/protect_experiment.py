"""``prunelens experiment protect``: does protecting NSA-selected neurons change what pruning costs?

A controlled comparison at each sparsity (default Wanda 50 %; 2:4 on request), four arms on the
same seeded evaluation examples:

- ``dense``: the unpruned model;
- ``unprotected``: the method as it is;
- ``nsa``: the method with the top ``ratio`` of neurons by NSA score on the protected task's
  examples kept (``backend.guided.protection_sources.protection_from_task``; the selection texts
  are drawn from the task's split outside the evaluation sample, and the overlap is recorded);
- ``random``: the same number of neurons per layer drawn at random (seeded) and kept the same way,
  the control for "protecting any neurons at all".

Every arm is evaluated on the protected task and the control tasks with the project's runner
(lm-eval, ``limit`` seeded examples, per-example scores logged) and stored in the results store;
the table gives each accuracy with its 95 % interval (lm-eval's stderr) and, against the
unprotected arm on the same examples, the paired difference with its bootstrap interval and
exact McNemar p-value (``backend.evaluation.uncertainty.paired_difference``); an interval that
covers 0 reads "not distinguishable". The document is stored (table ``experiments``, kind
``protect``) after every evaluation, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from backend.errors import NotFoundError, UserError
from backend.evaluation.runner import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLE_SEED
from backend.evaluation.store import ResultsStore
from backend.evaluation.uncertainty import (
    NOT_DISTINGUISHABLE,
    normal_interval,
    paired_difference,
    paired_vectors,
)
from backend.pruning.options import DEFAULT_RATIO, PROTECT_TEXTS, ProtectOptions
from backend.pruning.protection import DEFAULT_UPWEIGHT_FACTOR

KIND = "protect"
ARMS = ("dense", "unprotected", "nsa", "random")
METRIC = "acc,none"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ProtectExperimentSpec:
    """Everything that decides the experiment's numbers (its id is a hash of this)."""

    model: str
    task: str = "sst2"  # the protected task: NSA selects its neurons, and it is evaluated
    controls: tuple[str, ...] = ("rte", "arc_easy")
    ratio: float = DEFAULT_RATIO  # fraction of all MLP neurons protected
    sparsities: tuple[str, ...] = ("0.5",)
    method: str = "wanda"
    calibration: str = "lambada"  # offline, general text (not one of the evaluated tasks)
    nsamples: int = 32
    seqlen: int = 512
    limit: int = 200
    sample_seed: int = DEFAULT_SAMPLE_SEED
    seed: int = 0  # selection texts and the random arm's draw
    texts: int = PROTECT_TEXTS  # NSA selection texts
    mode: str = ProtectOptions.model_fields["protect_mode"].default
    factor: float = DEFAULT_UPWEIGHT_FACTOR
    batch_size: int = field(default=DEFAULT_BATCH_SIZE, compare=False)

    def check(self) -> None:
        """UserError for anything that would fail later; before loading a model."""
        from backend.evaluation.registry import choose_sources, parse_task_names
        from backend.guided.protection_sources import check_ratio, check_task
        from backend.pruning.config import PruneConfig
        from backend.pruning.protection import check_mode
        from backend.pruning.spec import SparsitySpec

        check_task(self.task)
        check_ratio(self.ratio)
        check_mode(self.mode, self.factor)
        if not self.sparsities:
            raise UserError("give at least one sparsity (e.g. 0.5 or 2:4)")
        choose_sources(parse_task_names(list(self.tasks)))
        if self.limit < 1 or self.texts < 1 or self.nsamples < 1 or self.seqlen < 2:
            raise UserError("--limit, --texts, --nsamples must be at least 1 and --seqlen at least 2")
        for sparsity in self.sparsities:
            config = PruneConfig(method=self.method, calibration=self.calibration,
                                 spec=SparsitySpec.parse(sparsity), nsamples=self.nsamples,
                                 seqlen=self.seqlen, seed=self.seed)
            config.validate()
            if not config.info.protects:
                raise UserError(f"method {self.method!r} does not take protected neurons")

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.task, *[name for name in self.controls if name != self.task])

    def to_json(self) -> dict:
        values = asdict(self)
        values.pop("batch_size")
        return {**values, "controls": list(self.controls), "sparsities": list(self.sparsities)}

    @property
    def id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]
        return f"protect-{self.task}-{digest}"


def experiment_store(store: ResultsStore | None = None) -> ResultsStore:
    return store or ResultsStore.from_settings()


def read_experiment(experiment_id: str, store: ResultsStore | None = None) -> dict:
    document = experiment_store(store).experiment(KIND, experiment_id)
    if document is None:
        raise NotFoundError(f"unknown protection experiment {experiment_id!r} (see `prunelens experiment list`)")
    return document


def list_experiments(store: ResultsStore | None = None) -> list[dict]:
    """Summaries of the stored protection experiments (newest first)."""
    return [{key: document.get(key) for key in ("id", "status", "created_at", "updated_at", "spec")}
            for document in experiment_store(store).experiments(KIND)]


# ----------------------------------------------------------------------------- the run


def run_experiment(spec: ProtectExperimentSpec, *, progress: Progress | None = None,
                   store: ResultsStore | None = None, loaded=None) -> dict:
    """Run (or resume: stored variants and results are reused) the experiment; returns its document."""
    from backend.evaluation.runner import evaluate
    from backend.guided.protection_sources import matched_random, protection_from_task
    from backend.pruning.config import PruneConfig
    from backend.pruning.engine import create_variant
    from backend.pruning.spec import SparsitySpec

    spec.check()
    report = progress or (lambda _fraction, _message: None)
    store = experiment_store(store)
    if loaded is None:
        from backend.models.loader import load_model

        loaded = load_model(spec.model)
    if loaded.name != spec.model:
        raise UserError(f"the experiment is for {spec.model!r}, the loaded model is {loaded.name!r}")
    started = time.perf_counter()
    document: dict = {"id": spec.id, "kind": KIND, "status": "running", "spec": spec.to_json(),
                      "created_at": datetime.now(UTC).isoformat(timespec="seconds"), "arms": {}, "rows": []}

    nsa = reusable_protection(spec, store)
    if nsa is None:
        report(0.0, f"NSA selection on {spec.texts} {spec.task} texts")
        nsa = protection_from_task(loaded, spec.task, spec.ratio, spec.mode, spec.factor, n_texts=spec.texts,
                                   seed=spec.seed, evaluation_limit=spec.limit, evaluation_seed=spec.sample_seed)
    random_arm = matched_random(nsa, loaded.adapter.neuron_count(loaded.model), seed=spec.seed)
    document["protection"] = {"nsa": nsa.describe(), "random": random_arm.describe()}
    document["selection"] = {key: nsa.source[key] for key in
                             ("texts", "evaluation_examples_excluded", "overlap_with_evaluation", "texts_digest")}
    store.put_experiment(KIND, spec.id, "running", document)

    plan: list[tuple[str, str, object]] = [("", "dense", None)]
    for sparsity in spec.sparsities:
        plan += [(sparsity, "unprotected", None), (sparsity, "nsa", nsa), (sparsity, "random", random_arm)]
    for step, (sparsity, arm, protection) in enumerate(plan):
        fraction = step / len(plan)
        variant = None
        if arm != "dense":
            report(fraction, f"pruning: {spec.method} {sparsity} {arm}")
            config = PruneConfig(method=spec.method, calibration=spec.calibration,
                                 spec=SparsitySpec.parse(sparsity), nsamples=spec.nsamples, seqlen=spec.seqlen,
                                 seed=spec.seed, protection=protection)  # type: ignore[arg-type]
            variant = create_variant(loaded, config).variant_id
        report(fraction, f"evaluating {arm} {sparsity}".strip())
        results = evaluate(loaded, list(spec.tasks), variant_id=variant, limit=spec.limit,
                           sample_seed=spec.sample_seed, batch_size=spec.batch_size, store=store)
        document["arms"][_arm_key(sparsity, arm)] = {
            "sparsity": sparsity or None, "arm": arm, "variant_id": variant,
            "results": {result.task: _result_key_json(result.stored.key) for result in results}}
        document["rows"] = table_rows(document, store)
        document["seconds"] = time.perf_counter() - started
        store.put_experiment(KIND, spec.id, "running", document)
    document["status"] = "done"
    store.put_experiment(KIND, spec.id, "done", document)
    report(1.0, "done")
    return document


# The spec fields that decide the NSA selection (not the sparsities, method or controls).
SELECTION_FIELDS = ("model", "task", "ratio", "texts", "seed", "limit", "sample_seed", "mode", "factor")


def reusable_protection(spec: ProtectExperimentSpec, store: ResultsStore):
    """The NSA protection of a stored experiment whose selection inputs equal ``spec``'s, or None.

    The selection (NSA steps 1-2 on the same texts, greedy generation) is deterministic and the
    slowest part on a CPU (minutes per text set), so an experiment with other sparsities or
    controls reuses it; the source records which experiment it came from.
    """
    from backend.pruning.protection import Protection

    wanted = spec.to_json()
    for document in store.experiments(KIND):
        stored = (document.get("protection") or {}).get("nsa")
        if stored is None or any(document["spec"].get(name) != wanted[name] for name in SELECTION_FIELDS):
            continue
        neurons = {int(layer): indices for layer, indices in stored["neuron_indices"].items()}
        return Protection.create(neurons, spec.mode, spec.factor,
                                 source={**stored["source"], "reused_from": document["id"]})
    return None


def _arm_key(sparsity: str, arm: str) -> str:
    return arm if arm == "dense" else f"{sparsity}/{arm}"


def _result_key_json(key) -> dict:
    return {"base_model": key.base_model, "variant_id": key.variant_id, "task": key.task, "limit": key.limit,
            "data_source": key.data_source, "harness_version": key.harness_version,
            "sample_seed": key.sample_seed, "code_version": key.code_version}


def _result_key(values: dict):
    from backend.evaluation.store import ResultKey

    return ResultKey(**values)


# ----------------------------------------------------------------------------- the table


def table_rows(document: dict, store: ResultsStore) -> list[dict]:
    """One row per (sparsity, task, arm): accuracy, 95 % interval, n, and for protected arms the
    paired difference to the unprotected arm on the same examples (None where not measured yet)."""
    spec = document["spec"]
    rows = []
    dense = document["arms"].get("dense")
    for sparsity in spec["sparsities"]:
        if not any(f"{sparsity}/{arm}" in document["arms"] for arm in ARMS[1:]):
            continue  # nothing measured at this sparsity (yet): no block of dense rows alone
        for task in (spec["task"], *[name for name in spec["controls"] if name != spec["task"]]):
            reference = document["arms"].get(f"{sparsity}/unprotected")
            for arm in ARMS:
                entry = dense if arm == "dense" else document["arms"].get(f"{sparsity}/{arm}")
                if entry is None or task not in entry["results"]:
                    continue
                key = _result_key(entry["results"][task])
                stored = store.get(key)
                if stored is None:
                    continue
                value, stderr = stored.metric(METRIC), stored.stderr(METRIC)
                low, high = normal_interval(value, stderr) if value is not None and stderr is not None else (None, None)
                row = {"sparsity": sparsity, "task": task, "arm": arm, "variant_id": entry["variant_id"],
                       "accuracy": value, "low": low, "high": high, "n": stored.n_examples,
                       "protected_task": task == spec["task"], "vs_unprotected": None}
                if arm in ("nsa", "random") and reference is not None and task in reference["results"]:
                    row["vs_unprotected"] = _paired(store, _result_key(reference["results"][task]), key)
                if arm == "random":
                    nsa_entry = document["arms"].get(f"{sparsity}/nsa")
                    if nsa_entry is not None and task in nsa_entry["results"]:
                        row["nsa_vs_random"] = _paired(store, key, _result_key(nsa_entry["results"][task]))
                rows.append(row)
    return rows


def _paired(store: ResultsStore, reference_key, other_key) -> dict | None:
    """other − reference on their shared examples (bootstrap interval, exact McNemar p)."""
    name = METRIC.partition(",")[0]
    reference = (store.outcomes(reference_key) or {}).get(name)
    other = (store.outcomes(other_key) or {}).get(name)
    if not reference or not other:
        return None
    reference_vector, other_vector = paired_vectors(reference, other)
    if len(reference_vector) == 0:
        return None
    return paired_difference([(reference_vector, other_vector)]).to_json()


def format_table(document: dict) -> str:
    """The experiment as plain text: accuracies with intervals, paired differences with p-values."""
    spec = document["spec"]
    selection = document.get("selection") or {}
    protection = (document.get("protection") or {}).get("nsa") or {}
    lines = [(f"{document['id']} ({document['status']}): {spec['model']}, {spec['method']} "
             f"{', '.join(spec['sparsities'])}, protect {protection.get('count', '?')} neurons "
             f"(top {spec['ratio']:g} by NSA on {selection.get('texts', '?')} {spec['task']} texts, "
             f"overlap with the evaluation examples: {selection.get('overlap_with_evaluation', '?')}), "
             f"mode {spec['mode']}, {spec['limit']} examples per task (seed {spec['sample_seed']})"),
             f"{'sparsity':<9}{'task':<10}{'arm':<12}{'acc %':>7}  {'95% CI':<15} {'vs unprotected (paired)':<40}"]
    for row in document.get("rows", []):
        accuracy = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}"
        interval = "" if row["low"] is None else f"[{100 * row['low']:.1f}, {100 * row['high']:.1f}]"
        versus = ""
        difference = row.get("vs_unprotected")
        if difference is not None:
            versus = (f"{100 * difference['difference']:+.1f} [{100 * difference['low']:+.1f}, "
                      f"{100 * difference['high']:+.1f}] p={difference['p_value']:.2g} {difference['verdict']}")
        sparsity = "-" if row["arm"] == "dense" else row["sparsity"]
        lines.append(f"{sparsity:<9}{row['task']:<10}{row['arm']:<12}{accuracy:>7}  {interval:<15} {versus}")
    verdicts = [row["vs_unprotected"]["verdict"] for row in document.get("rows", []) if row.get("vs_unprotected")]
    if verdicts and all(verdict == NOT_DISTINGUISHABLE for verdict in verdicts):
        lines.append("every protected arm is within chance of the unprotected one (all 95% intervals cover 0)")
    return "\n".join(lines)


def markdown_table(document: dict) -> str:
    """The table in Markdown (for docs): accuracy % [95 % CI]; paired Δ to unprotected with p."""
    lines = ["| sparsity | task | arm | accuracy % [95% CI] | Δ vs unprotected, pts [95% CI] | McNemar p | reading |",
             "|---|---|---|---|---|---:|---|"]
    for row in document.get("rows", []):
        accuracy = "n/a" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}"
        if row["low"] is not None:
            accuracy += f" [{100 * row['low']:.1f}, {100 * row['high']:.1f}]"
        versus = row.get("vs_unprotected")
        difference = p_value = reading = ""
        if versus is not None:
            difference = (f"{100 * versus['difference']:+.1f} [{100 * versus['low']:+.1f}, "
                          f"{100 * versus['high']:+.1f}]")
            p_value, reading = f"{versus['p_value']:.2f}", versus["verdict"]
        sparsity = "—" if row["arm"] == "dense" else row["sparsity"]
        cells = (sparsity, row['task'], row['arm'], accuracy, difference, p_value, reading)
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)
