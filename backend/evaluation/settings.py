"""Evaluation settings, read from the environment with the prefix PRUNELENS_ like backend.config.

Kept apart from backend.config.Settings so that the evaluation feature owns its options:
PRUNELENS_RESULTS_URL, PRUNELENS_MEDNLI_PATH, PRUNELENS_EVAL_DATA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EvaluationSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNELENS_", extra="ignore")

    results_url: str | None = Field(
        default=None,
        description="Results database: a path or sqlite:///path (default <cache_dir>/results.db).",
    )
    mednli_path: Path | None = Field(
        default=None,
        description="MedNLI test data (credentialed, never downloaded): mli_test_v1.jsonl or its folder.",
    )
    eval_data: Literal["auto", "packaged", "hub"] = Field(
        default="auto",
        description="'auto': data shipped in wheels where there is some, else the hub; "
        "'packaged': only shipped data; 'hub': always the model hub (the splits lm-eval uses).",
    )

    @property
    def results_location(self) -> str:
        return self.results_location_in(None)

    def results_location_in(self, cache_settings) -> str:
        """results_url, else results.db in the cache of ``cache_settings`` (default: the environment's)."""
        from backend.config import get_settings  # imports torch: only when needed

        return self.results_url or str((cache_settings or get_settings()).cache_dir / "results.db")


def evaluation_settings() -> EvaluationSettings:
    """Read afresh each time: cheap, and tests or Ray workers may change the environment."""
    return EvaluationSettings()
