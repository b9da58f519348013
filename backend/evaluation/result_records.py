"""What the results store keeps, as Python objects: a result's key and the stored result.

The SQL that stores them lives in ``backend.evaluation.store``; these records are shared by the
store, the tables and the API without any of them opening the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from backend.evaluation.code_version import evaluation_code_version

DENSE = ""  # variant_id of the dense (unpruned) model
WHOLE_SPLIT = -1  # the stored limit of a run without --limit (NULLs would never be equal in a key)
# The stored sample seed of a run on the whole split, and of a schema-1 run on the first N rows
# (kept and shown, never reused for a seeded sample).
NO_SAMPLE, FIRST_ROWS = -1, -2


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ResultKey:
    """What identifies a result: the same key means the same numbers."""

    base_model: str
    variant_id: str  # DENSE for the unpruned model
    task: str
    limit: int | None  # None: the whole split
    data_source: str  # "packaged", "hub" or "file:<content hash>"
    harness_version: str
    sample_seed: int | None = None  # which random `limit` examples; None: whole split (or FIRST_ROWS)
    # The evaluation code that computed it (default: this code); see backend/evaluation/code_version.py.
    code_version: str = field(default_factory=evaluation_code_version)
    # Demonstrations before each example (lm-eval's num_fewshot): a 0-shot and a 5-shot score are
    # different numbers and never stand in for each other.
    num_fewshot: int = 0

    def row(self) -> tuple:
        limit = WHOLE_SPLIT if self.limit is None else int(self.limit)
        seed = NO_SAMPLE if self.limit is None or self.sample_seed is None else int(self.sample_seed)
        return (self.base_model, self.variant_id, self.task, limit, seed, self.data_source,
                self.harness_version, self.code_version, int(self.num_fewshot))


@dataclass
class StoredResult:
    key: ResultKey
    n_examples: int
    metrics: dict  # lm-eval's results[task]: "acc,none", "acc_stderr,none", "alias", ...
    task_version: str | None
    seconds: float | None
    created_at: str
    variant: dict | None = None  # method, calibration, sparsity, seqlen, nsamples, seed (None: dense)

    @property
    def stale(self) -> bool:
        """Computed by other evaluation code than this one: not a current number."""
        return self.key.code_version != evaluation_code_version()

    def metric(self, name: str = "acc,none") -> float | None:
        value = self.metrics.get(name)
        return float(value) if isinstance(value, (int, float)) else None

    def stderr(self, name: str = "acc,none") -> float | None:
        metric, _, filter_name = name.partition(",")
        value = self.metrics.get(f"{metric}_stderr,{filter_name or 'none'}")
        return float(value) if isinstance(value, (int, float)) else None

    def to_json(self) -> dict:
        from backend.evaluation.uncertainty import metric_intervals

        return {
            "base_model": self.key.base_model,
            "variant_id": self.key.variant_id or None,
            "task": self.key.task,
            "limit": self.key.limit,
            "sample_seed": self.key.sample_seed,
            "num_fewshot": self.key.num_fewshot,
            "data_source": self.key.data_source,
            "harness_version": self.key.harness_version,
            "code_version": self.key.code_version,
            "stale": self.stale,
            "n_examples": self.n_examples,
            "metrics": self.metrics,
            "intervals": metric_intervals(self.metrics),
            "task_version": self.task_version,
            "seconds": self.seconds,
            "created_at": self.created_at,
            "variant": self.variant,
        }
