"""Settings, read from the environment with the prefix PRUNELENS_ (e.g. PRUNELENS_CACHE_DIR)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend.errors import UserError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PRUNELENS_", extra="ignore")

    cache_dir: Path = Field(
        default=Path("models_cache"),
        description="Converted models, pruned variants and the results database live here.",
    )
    device: str = Field(default="auto", description="'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1'…")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    trust_remote_code: bool = Field(
        default=False, description="Allow hub models that ship their own Python code. Off by default."
    )
    default_model: str = Field(default="smollm2-135m-instruct")
    api_token: str | None = Field(
        default=None, description="Bearer token; required when the API binds to a non-loopback host."
    )

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def variants_dir(self) -> Path:
        return self.cache_dir / "variants"

    @property
    def nsa_db(self) -> Path:
        """The NSA result store (``backend.nsa.results_store``), shared by the API and the CLI."""
        return self.cache_dir / "nsa_results.db"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
