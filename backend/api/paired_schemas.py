"""Response models of accuracy uncertainty: a paired difference to dense, a dense comparison."""

from __future__ import annotations

from pydantic import BaseModel, Field


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
    n_examples: int = Field(description="Examples the variant was scored on.")
    metric: str = Field(description="The lm-eval metric.")
    variant: float = Field(description="The variant's value.")
    variant_interval: list[float] | None = Field(description="Its 95% interval.")
    dense: float | None = Field(description="The dense model's value on the same examples.")
    dense_interval: list[float] | None = Field(description="Its 95% interval.")
    difference: PairedDifference | None = Field(
        description="Paired difference; null without per-example scores for both."
    )
