"""Evaluate a loaded model, dense or as a pruned variant, with lm-evaluation-harness, and store it.

The model is evaluated in memory: ``HFLM(pretrained=loaded.model, tokenizer=...)`` wraps the
already-loaded model, and a variant is swapped in place with ``variant_applied`` (no checkpoint is
written). Scores are lm-eval's own: its public ``evaluate`` with ``simple_evaluate``'s defaults
(see ``run_harness``), one task at a time so that each finished task is stored before the next one
starts. Stored results are reused.

``limit`` N scores a seeded random sample of N examples (lm-eval's ``samples=`` argument), so the
dense model and every variant evaluated with the same seed see the same examples, and each
example's score is stored with the result (``log_samples``) to compare them pair by pair.

``num_fewshot`` k puts k demonstrations before each example (lm-eval's ``num_fewshot``, drawn by
its sampler with its fixed few-shot seed); k is part of the result's key.
"""

from __future__ import annotations

import importlib.metadata
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backend.errors import UserError
from backend.evaluation.registry import (
    choose_sources,
    parse_task_names,
    prepared_tasks,
    quiet_lm_eval_logs,
)
from backend.evaluation.settings import EvaluationSettings
from backend.evaluation.store import DENSE, ResultKey, ResultsStore, StoredResult
from backend.evaluation.uncertainty import normal_interval

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

Progress = Callable[[float, str], None]
DEFAULT_BATCH_SIZE = 16
# Resamples for metrics without a closed-form stderr (f1 of MRPC/QQP); acc's stderr is exact.
# lm-eval's default of 100000 took 14 minutes for MRPC's f1 on 2 CPU cores; 0 would drop every
# stderr, acc's included.
DEFAULT_BOOTSTRAP_ITERS = 1000
DEFAULT_SAMPLE_SEED = 1234  # which examples --limit takes; the same for every model by default
MAX_FEWSHOT = 64  # more demonstrations than any task's context holds for the models we run

# Shots for every task, or per task (a task not named gets 0).
FewShot = int | Mapping[str, int]


def check_fewshot(num_fewshot: FewShot) -> None:
    """Every count a non-negative integer up to MAX_FEWSHOT (UserError naming the bad one)."""
    counts = num_fewshot.items() if isinstance(num_fewshot, Mapping) else [("", num_fewshot)]
    for task, count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_FEWSHOT:
            where = f" for {task}" if task else ""
            raise UserError(f"num_fewshot{where} must be an integer from 0 to {MAX_FEWSHOT}, got {count!r}")


def shots_for(task: str, num_fewshot: FewShot) -> int:
    """The number of demonstrations ``task`` gets under ``num_fewshot``."""
    return int(num_fewshot.get(task, 0)) if isinstance(num_fewshot, Mapping) else int(num_fewshot)


def harness_version() -> str:
    return importlib.metadata.version("lm_eval")


@dataclass
class TaskResult:
    task: str
    stored: StoredResult
    reused: bool

    def summary_line(self) -> str:
        """``sst2  acc,none=0.6250 ± 0.0776 (95% 0.4729..0.7771)  n=40  packaged  (stored)`` - every
        metric of the task with lm-eval's stderr and the 95% interval it gives."""
        parts = []
        for name, value in self.stored.metrics.items():
            metric, _, _filter = name.partition(",")
            if not _filter or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = self.stored.stderr(name)
            interval = ""
            if stderr is not None:
                low, high = normal_interval(value, stderr)
                interval = f" ± {stderr:.4f} (95% {low:.4f}..{high:.4f})"
            parts.append(f"{name}={value:.4f}{interval}")
        state = "stored earlier" if self.reused else f"{self.stored.seconds or 0:.1f}s"
        return (f"{self.task}\t{'  '.join(parts)}\tn={self.stored.n_examples}\t"
                f"{self.stored.key.data_source}\t({state})")


_HARNESS_LOCK = threading.Lock()  # one lm-eval run at a time per process (logger levels, warnings)


def sample_indices(n_docs: int, limit: int, seed: int) -> list[int]:
    """``limit`` distinct doc indices of an evaluation split of ``n_docs``, drawn with ``seed``,
    sorted: the same (n_docs, limit, seed) always gives the same examples."""
    import numpy as np

    chosen = np.random.default_rng(seed).choice(n_docs, size=min(limit, n_docs), replace=False)
    return sorted(int(index) for index in chosen)


def example_outcomes(samples: list[dict]) -> dict[str, dict[int, float]]:
    """lm-eval's logged samples of one task -> ``{metric: {doc id: score}}`` for the metrics scored
    per example as a number (acc, acc_norm; not f1/mcc, whose per-example entries are pairs)."""
    outcomes: dict[str, dict[int, float]] = {}
    for sample in samples:
        if sample.get("filter", "none") != "none":
            continue
        for metric in sample.get("metrics", []):
            value = sample.get(metric)
            if isinstance(value, int | float):
                outcomes.setdefault(metric, {})[int(sample["doc_id"])] = float(value)
    return outcomes


def run_harness(lm, task, manager, limit: int | None, bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
                sample_seed: int = DEFAULT_SAMPLE_SEED, num_fewshot: int = 0) -> dict:
    """lm-eval's ``evaluate`` on one loaded Task, prepared as ``simple_evaluate`` prepares it, on
    ``limit`` examples drawn with ``sample_seed`` (None: all), each after ``num_fewshot``
    demonstrations: its full output dict, with the per-example ``samples``.

    ``simple_evaluate`` would also collect ``pip list``, GPU details and ``git describe`` for its
    output's header (1-3 s per call on 2 CPU cores, for a report we do not keep), so this calls
    the public ``lm_eval.evaluator.evaluate`` it wraps, after the same task preparation: the
    task's num_fewshot set (our task configs set none), and the few-shot sampler's seed. Global RNGs are
    not reseeded: loglikelihood scoring draws no random numbers, and lm-eval's bootstrap seeds its
    own ``random.Random`` per chunk. Bootstrap runs in this process when DISABLE_MULTIPROC is set,
    which ``backend.process_setup`` does at process start.
    """
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.evaluator import evaluate as lm_eval_evaluate

    samples = None
    if limit is not None:
        samples = {task.task_name: sample_indices(len(task.eval_docs), limit, sample_seed)}
    with _HARNESS_LOCK, quiet_lm_eval_logs(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="sklearn")  # f1 of a one-class sample
        task_dict = manager.load([task])
        for task_object in task_dict["tasks"].values():
            task_object.set_config(key="num_fewshot", value=num_fewshot)
            task_object.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
        output = lm_eval_evaluate(lm=lm, task_dict=task_dict, samples=samples, log_samples=True,
                                  bootstrap_iters=bootstrap_iters)
    if output is None:  # only non-zero ranks of a distributed run get None
        raise UserError("lm-eval returned no results (distributed run on a non-zero rank?)")
    return output


def evaluate(
    loaded: LoadedModel,
    tasks: str | Sequence[str],
    *,
    variant_id: str | None = None,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    store: ResultsStore | None = None,
    data_files: dict[str, str] | None = None,
    settings: EvaluationSettings | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    progress: Progress | None = None,
    cache_settings=None,
    sample_seed: int = DEFAULT_SAMPLE_SEED,
    num_fewshot: FewShot = 0,
) -> list[TaskResult]:
    """Results of ``loaded`` (or of its variant ``variant_id``) on ``tasks``, in the given order.

    Results already in the store are returned as they are; the others are computed with lm-eval
    and stored. ``limit`` takes N documents of each task's evaluation split at random, drawn with
    ``sample_seed`` (the same seed gives the same documents to every model). ``num_fewshot``: the
    demonstrations before each example, for every task or per task (unnamed tasks: 0); a result
    with other shots is another result. ``data_files`` maps a task to a local file that replaces
    its data.
    ``cache_settings``: whose cache holds the variants and the results (default: the environment's).
    """
    from backend.pruning.variants import read_manifest, validate_variant_id, variant_applied

    names = parse_task_names(tasks)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a positive number of examples, got {limit!r}")
    if isinstance(sample_seed, bool) or not isinstance(sample_seed, int) or sample_seed < 0:
        raise UserError(f"sample seed must be a non-negative integer, got {sample_seed!r}")
    check_fewshot(num_fewshot)
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    report = progress or (lambda _fraction, _message: None)
    store = store or ResultsStore.from_settings(cache_settings)

    already_applied = loaded.extra.get("variant_id")  # a model from load_variant() is the variant
    if already_applied and variant_id not in (None, already_applied):
        raise UserError(f"this model already is variant {already_applied!r}; load the base model instead")
    variant_id = variant_id or already_applied
    if variant_id:
        manifest = read_manifest(validate_variant_id(variant_id), cache_settings)
        if manifest.get("base_model") != loaded.name:
            raise UserError(f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, "
                            f"not {loaded.name!r}")
        store.record_variant(manifest)

    sources = choose_sources(names, data_files=data_files, settings=settings)
    version = harness_version()
    keys = {name: ResultKey(loaded.name, variant_id or DENSE, name, limit, sources[name].identity, version,
                            sample_seed, num_fewshot=shots_for(name, num_fewshot))
            for name in names}
    results: dict[str, TaskResult] = {}
    for name in names:
        stored = store.get(keys[name])
        if stored is not None:
            results[name] = TaskResult(name, stored, reused=True)
    missing = [name for name in names if name not in results]
    if not missing:
        report(1.0, "all results were stored earlier")
        return [results[name] for name in names]

    with prepared_tasks({name: sources[name] for name in missing}) as prepared:
        report(0.0, f"loading {len(missing)} task(s)")
        task_objects = {name: prepared.load(name) for name in missing}  # data problems before compute
        from lm_eval.models.huggingface import HFLM

        overlay = (variant_applied(loaded, variant_id, cache_settings) if variant_id and not already_applied
                   else nullcontext())
        with overlay:
            lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size)
            for done, name in enumerate(missing):
                report(done / len(missing), f"evaluating {name} ({done + 1}/{len(missing)})")
                started = time.perf_counter()
                output = run_harness(lm, task_objects[name], prepared.manager, limit, bootstrap_iters,
                                     sample_seed, keys[name].num_fewshot)
                stored = store.put(
                    keys[name],
                    n_examples=int(output["n-samples"][name]["effective"]),
                    metrics=output["results"][name],
                    task_version=output.get("versions", {}).get(name),
                    task_config=output.get("configs", {}).get(name),
                    seconds=time.perf_counter() - started,
                    outcomes=example_outcomes(output.get("samples", {}).get(name, [])),
                )
                results[name] = TaskResult(name, stored, reused=False)
    report(1.0, "done")
    return [results[name] for name in names]
