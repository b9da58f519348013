"""Request and response models of evaluations: results with intervals, tables, paired differences
to the dense model."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backend.api.schemas import VARIANT_ID_PATTERN, Strict


class PairedDifference(BaseModel):
    n_examples: int = Field(description="Examples paired.")
    difference: float = Field(description="Variant minus dense (fraction).")
    low: float = Field(description="Paired bootstrap 95% interval, lower end.")
    high: float = Field(description="Paired bootstrap 95% interval, upper end.")
    p_value: float = Field(
        description="Exact McNemar (one variant) or sign-flip permutation p-value."
    )
    test: str = Field(description="Which test gave the p-value.")
    worse: int | None = Field(
        description="Examples right for dense, wrong for the variant (McNemar)."
    )
    better: int | None = Field(
        description="Examples wrong for dense, right for the variant (McNemar)."
    )
    distinguishable: bool = Field(description="False when the interval contains 0.")
    verdict: str = Field(description="'not distinguishable', 'lower' or 'higher'.")


class DenseComparison(BaseModel):
    task: str = Field(description="Task name.")
    limit: int | None = Field(description="Examples limit (null: whole split).")
    sample_seed: int | None = Field(description="Seed of the random examples.")
    num_fewshot: int = Field(default=0, description="Demonstrations before each example (dense: the same).")
    n_examples: int = Field(description="Examples the variant was scored on.")
    metric: str = Field(description="The lm-eval metric.")
    variant: float = Field(description="The variant's value.")
    variant_interval: list[float] | None = Field(description="Its 95% interval.")
    dense: float | None = Field(description="The dense model's value on the same examples.")
    dense_interval: list[float] | None = Field(description="Its 95% interval.")
    difference: PairedDifference | None = Field(
        description="Paired difference; null without per-example scores for both."
    )


# ----------------------------------------------------------------------------- evaluations


class EvaluationRequest(Strict):
    model: str | None = Field(default=None, description="Base model; default: the server's.")
    variant: str | None = Field(
        default=None,
        pattern=VARIANT_ID_PATTERN,
        description="A variant id of that model; omitted: the dense model.",
    )
    tasks: list[str] = Field(
        min_length=1,
        max_length=64,
        description="Task names from GET /tasks (or 'offline', 'all', a category key).",
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Examples per task, drawn at random with sample_seed (omitted: the whole split).",
    )
    sample_seed: int = Field(
        default=1234,
        ge=0,
        le=2**32 - 1,
        description="Which examples `limit` draws; the same seed gives dense and variants the same ones.",
    )
    num_fewshot: int = Field(
        default=0,
        ge=0,
        le=64,
        description="Demonstrations before each example (lm-eval's num_fewshot); part of the result's key.",
    )

    @field_validator("tasks")
    @classmethod
    def _tasks_not_blank(cls, tasks: list[str]) -> list[str]:
        if any(not task.strip() or len(task) > 64 for task in tasks):
            raise ValueError("task names must be non-empty strings of at most 64 characters")
        return [task.strip() for task in tasks]


class EvaluationResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    base_model: str = Field(description="Dense model.")
    variant_id: str | None = Field(description="Variant evaluated (null: the dense model).")
    task: str = Field(description="Task name.")
    limit: int | None = Field(description="Examples limit (null: whole split).")
    sample_seed: int | None = Field(
        default=None,
        description="Seed of the random `limit` examples (null: whole split; -2: first rows).",
    )
    num_fewshot: int = Field(default=0, description="Demonstrations before each example.")
    n_examples: int = Field(description="Examples scored.")
    metrics: dict[str, Any] = Field(
        description="lm-eval's result dict: 'acc,none', 'acc_stderr,none', ..."
    )
    intervals: dict[str, list[float]] = Field(
        default_factory=dict,
        description="95% interval per metric with a stderr: value ± 1.96·stderr.",
    )
    created_at: str = Field(description="UTC, ISO 8601.")
    code_version: str = Field(description="Evaluation code that computed it (a source hash).")
    stale: bool = Field(
        description="Computed by other evaluation code than the server's: not a current number."
    )


class TableRow(BaseModel):
    label: str = Field(description="Row label (a task, model, method or category).")
    values: list[float | None] = Field(
        description="Mean metric per column; null where no result exists."
    )
    counts: list[int] = Field(description="Number of results averaged in each cell.")
    intervals: list[list[float] | None] = Field(
        default_factory=list,
        description="95% interval per cell: mean ± 1.96·(mean stderr of its results); null: none.",
    )
    differences: list[PairedDifference | None] = Field(
        default_factory=list,
        description="Per cell, its paired difference to the dense model on the same examples.",
    )


class ResultsTable(BaseModel):
    kind: str = Field(description="Which view.")
    metric: str = Field(description="The lm-eval metric averaged.")
    row_header: str = Field(description="What the rows are.")
    columns: list[str] = Field(description="Column labels (calibration sets, sparsities, ...).")
    rows: list[TableRow]
    filters: dict[str, Any] = Field(description="Filters applied.")
