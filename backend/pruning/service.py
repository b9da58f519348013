"""Pruning a model from a request, the one path the CLI (`prunelens prune`) and the API (POST /variants) take.

``check_prune_request`` turns ``PruneOptions`` into the engine's ``PruneConfig`` and refuses bad
input before any work (no model loaded, no job created); a stored NSA result to protect is read
then too. ``prune_variant`` loads nothing itself: the caller passes the loaded model (the CLI
loads it, the API's job takes it from its pool under the compute lock), so both share every step
from the request to the written variant.

Where protected neurons come from (a stored NSA result, NSA on a task's examples) lives above
pruning; the caller passes it as a ``ProtectionSource`` (``ProtectionRequest`` of
``protection_sources``), so this module imports nothing from the packages that compute it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from backend.data.sources import FILE_PREFIX
from backend.errors import UserError
from backend.pruning.config import PruneConfig, require_protection_support
from backend.pruning.options import PruneOptions
from backend.pruning.protection import Protection

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel
    from backend.pruning.engine import VariantResult

Progress = Callable[[float, str], None]


class ProtectionSource(Protocol):
    """The protected neurons a request asks for (``protection_sources.ProtectionRequest``)."""

    @property
    def wanted(self) -> bool: ...

    def from_store(self, model_name: str, settings=None) -> Protection | None: ...

    def resolve(self, loaded: LoadedModel, settings=None, progress=None) -> Protection | None: ...


def check_prune_request(request: PruneOptions, *, model_name: str | None = None,
                        protection: ProtectionSource | None = None, allow_files: bool = True,
                        settings=None) -> PruneConfig:
    """The engine's config for ``request``; UserError on anything the engine would refuse.

    ``allow_files``: False over HTTP (a ``file:`` set would read the server's disk). With
    ``model_name``, a stored NSA result to protect is read now (an unknown id or another model's
    result fails before any work) and goes into the config."""
    from backend.pruning.registry import get_method

    method = get_method(request.method)
    calibration = request.calibration.strip()
    if not calibration.lower().startswith(FILE_PREFIX):
        calibration = calibration.lower()
    elif not allow_files:
        raise UserError("file: calibration sets read the server's disk and are not accepted over HTTP; "
                        "use a named set from GET /calibration-sets")
    config = PruneConfig(method=request.method, calibration=calibration,
                         spec=request.sparsity_spec(method), nsamples=request.nsamples,
                         seqlen=request.seqlen, seed=request.seed, options=request.options)
    config.validate()
    if protection is not None and protection.wanted:
        require_protection_support(method)
        if model_name is not None:
            stored = protection.from_store(model_name, settings)
            if stored is not None:
                config = replace(config, protection=stored)
    return config


def prune_variant(loaded: LoadedModel, request: PruneOptions, *, protection: ProtectionSource | None = None,
                  progress: Progress | None = None, settings=None,
                  on_variant_id: Callable[[str], None] | None = None,
                  allow_files: bool = True) -> VariantResult:
    """Prune ``loaded`` as ``request`` asks and write the variant (or reuse the one already written).

    ``protection``: where the protected neurons come from (run now, e.g. NSA on a task's
    examples). ``on_variant_id``: told the variant's id before the long work starts (a job
    records it, so a crash can clean up its staging folder)."""
    from backend.pruning.engine import create_variant, variant_id

    config = check_prune_request(request, protection=protection, allow_files=allow_files, settings=settings)
    if protection is not None and protection.wanted:
        if progress is not None:
            progress(0.0, "choosing the protected neurons")
        config = replace(config, protection=protection.resolve(loaded, settings))
    if on_variant_id is not None:
        on_variant_id(variant_id(loaded, config))
    return create_variant(loaded, config, progress=progress, settings=settings)
