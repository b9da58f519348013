"""API settings: the backend's Settings plus the server's limits, from PRUNELENS_* variables.

Kept next to the API so that the server owns its options: PRUNELENS_CORS_ORIGINS,
PRUNELENS_API_MAX_BODY_BYTES, PRUNELENS_API_MAX_UPLOAD_BYTES, PRUNELENS_API_QUEUE_SIZE,
PRUNELENS_API_WAIT_SECONDS, PRUNELENS_API_JOB_QUEUE_SIZE, PRUNELENS_API_MODEL_MEMORY_MB,
PRUNELENS_API_PAGE_PROCESSES.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from backend.config import Settings


class ApiSettings(Settings):
    cors_origins: str | None = Field(
        default=None,
        description="Comma-separated origins allowed by CORS (e.g. http://localhost:8501). Unset: CORS off.",
    )
    api_max_body_bytes: int = Field(default=1 << 20, gt=0, description="Largest JSON request body.")
    api_max_upload_bytes: int = Field(
        default=4 << 20, gt=0, description="Largest uploaded text file."
    )
    api_queue_size: int = Field(
        default=4,
        ge=0,
        description="Heavy requests (NSA) that may wait for the compute lock; more are refused with 429.",
    )
    api_wait_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a heavy request waits for the compute lock before a 503.",
    )
    api_job_queue_size: int = Field(
        default=16, gt=0, description="Jobs that may wait to run; more get 429."
    )
    api_model_memory_mb: int = Field(
        default=16384,
        gt=0,
        description="Memory budget of the models kept loaded besides the default one (LRU).",
    )
    api_nsa_cache_entries: int = Field(
        default=256, gt=0, description="Stored NSA results kept in memory."
    )
    api_page_processes: int = Field(
        default=2,
        ge=0,
        le=64,
        description="Worker processes that build neuron pages not read before "
        "(0: the server's own thread pool; see docs/neurons.md).",
    )

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in (self.cors_origins or "").split(",") if origin.strip()]

    @property
    def jobs_db(self) -> Path:
        return self.cache_dir / "jobs.db"


def api_settings(settings: Settings | None = None) -> ApiSettings:
    """ApiSettings from the environment, or built on top of given backend Settings."""
    if settings is None:
        return ApiSettings()
    if isinstance(settings, ApiSettings):
        return settings
    return ApiSettings(**settings.model_dump())
