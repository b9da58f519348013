"""Pruned variants on disk: ``<cache>/variants/<id>/`` = ``manifest.json`` + ``overlay.safetensors``.

A variant is an overlay on its base model. Methods that only zero weights (magnitude, Wanda,
RIA, MI neurons) store their masks as packed bits (1 bit per weight: ~13 MB instead of ~425 MB
for the 135M model); SparseGPT, which also updates the kept weights, stores the changed
weights. Tensors are keyed by the model's ``state_dict`` names, in each module's own layout
(GPT-2's Conv1D is ``[in, out]``). Variants are written to a temporary folder and renamed, so a
listed variant is always complete.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from backend.config import Settings, get_settings
from backend.errors import NotFoundError, UserError
from backend.pruning.spec import zero_where
from backend.storage import atomic_directory

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

MANIFEST = "manifest.json"
OVERLAY = "overlay.safetensors"
_VARIANT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


def validate_variant_id(text: str) -> str:
    """Variant ids are plain folder names: no separators, no '..', no absolute paths."""
    if not isinstance(text, str) or not _VARIANT_ID.match(text) or ".." in text:
        raise UserError(f"invalid variant id {str(text)[:80]!r}: use lowercase letters, digits, '.', '-', '_'")
    return text


def variants_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).variants_dir


def variant_dir(variant_id: str, settings: Settings | None = None) -> Path:
    return variants_root(settings) / validate_variant_id(variant_id)


def variant_exists(variant_id: str, settings: Settings | None = None) -> bool:
    path = variant_dir(variant_id, settings)
    return (path / MANIFEST).is_file() and (path / OVERLAY).is_file()


def read_manifest(variant_id: str, settings: Settings | None = None) -> dict:
    path = variant_dir(variant_id, settings) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"unknown variant {variant_id!r} (see `prunelens variants`)")
    return json.loads(path.read_text(encoding="utf-8"))


def list_variants(base: str | None = None, settings: Settings | None = None) -> list[dict]:
    """Manifests of the complete variants, each with ``stale``: written by other code than this
    process runs (see ``backend.pruning.config.code_version``)."""
    from backend.pruning.config import is_stale

    root = variants_root(settings)
    if not root.is_dir():
        return []
    manifests = []
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not (path / MANIFEST).is_file():
            continue  # staging folders of variants being written
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if base is None or manifest.get("base_model") == base:
            manifests.append({**manifest, "stale": is_stale(manifest)})
    return manifests


def delete_variant(variant_id: str, settings: Settings | None = None) -> None:
    path = variant_dir(variant_id, settings)
    if not path.is_dir():
        raise NotFoundError(f"unknown variant {variant_id!r}")
    # Rename first so that the variant disappears from listings at once, then remove.
    trash = path.with_name(f".deleting-{path.name}-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- writing


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[rows, cols]`` -> uint8 ``[rows, ceil(cols/8)]``, 8 mask bits per byte."""
    return torch.from_numpy(np.packbits(mask.contiguous().cpu().numpy(), axis=-1))


def unpack_mask(packed: torch.Tensor, cols: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy(), axis=-1, count=cols).astype(bool))


def write_variant(
    variant_id: str,
    manifest: dict,
    *,
    masks: dict[str, torch.Tensor] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    settings: Settings | None = None,
) -> Path:
    """Atomically write a variant from masks (bool, True = pruned) and/or replaced weights."""
    target = variant_dir(variant_id, settings)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, mask in (masks or {}).items():
        flat = mask.reshape(-1, mask.shape[-1]) if mask.dim() > 1 else mask.reshape(1, -1)
        tensors[f"mask::{name}"] = pack_mask(flat)
        shapes[name] = list(mask.shape)
    for name, weight in (weights or {}).items():
        tensors[f"weight::{name}"] = weight.detach().to("cpu").contiguous()
    manifest = {**manifest, "id": variant_id,
                "overlay": {"masks": sorted(masks or {}), "weights": sorted(weights or {})}}

    with atomic_directory(target) as staging:
        save_file(tensors, str(staging / OVERLAY), metadata={"mask_shapes": json.dumps(shapes)})
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return target


# ----------------------------------------------------------------------------- reading


def _read_overlay(variant_id: str, settings: Settings | None = None):
    path = variant_dir(variant_id, settings) / OVERLAY
    if not path.is_file():
        raise NotFoundError(f"unknown variant {variant_id!r} (see `prunelens variants`)")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        shapes = json.loads((handle.metadata() or {}).get("mask_shapes", "{}"))
    return load_file(str(path)), shapes


def variant_masks(variant_id: str, settings: Settings | None = None) -> dict[str, torch.Tensor]:
    """Bool masks (True = pruned) of every tensor the variant changed, in the module's layout.

    For replaced weights (SparseGPT) the mask is where the stored weight is exactly zero.
    """
    return {name: tensor if kind == "mask" else tensor == 0
            for name, kind, tensor in _overlay_ops(variant_id, settings)}


def _overlay_ops(variant_id: str, settings: Settings | None = None):
    """(name, kind, tensor) for each change: kind 'mask' (bool) or 'weight' (values)."""
    tensors, shapes = _read_overlay(variant_id, settings)
    for key, tensor in tensors.items():
        kind, name = key.split("::", 1)
        if kind == "mask":
            shape = shapes[name]
            yield name, "mask", unpack_mask(tensor, shape[-1]).reshape(shape)
        else:
            yield name, "weight", tensor


def apply_overlay(model: torch.nn.Module, variant_id: str, settings: Settings | None = None,
                  originals: dict[str, torch.Tensor] | None = None) -> None:
    """Apply the variant to ``model``.

    Without ``originals`` the parameters are changed in place (the model becomes the variant).
    With it, each parameter gets a new pruned tensor and its dense tensor is kept, untouched, in
    ``originals`` (a reference, not a copy), so restoring is a pointer swap and a failure
    half-way still leaves everything restorable.
    """
    params = dict(model.named_parameters())
    for name, kind, tensor in _overlay_ops(variant_id, settings):
        if name not in params:
            raise UserError(f"variant {variant_id!r} does not fit this model (no parameter {name})")
        param = params[name]
        if tuple(param.shape) != tuple(tensor.shape):
            raise UserError(f"variant {variant_id!r} does not fit this model ({name} shape differs)")
        replacement = tensor.to(param.device) if kind == "mask" else tensor.to(param.device, param.dtype)
        with torch.no_grad():
            if originals is None:
                if kind == "mask":
                    zero_where(param.data, replacement)
                else:
                    param.copy_(replacement)
                continue
            originals[name] = param.data
            param.data = zero_where(param.data.clone(), replacement) if kind == "mask" else replacement


@contextmanager
def variant_applied(loaded: LoadedModel, variant_id: str, settings: Settings | None = None) -> Iterator:
    """Temporarily turn ``loaded`` (a dense LoadedModel) into the variant; restores on exit."""
    manifest = read_manifest(variant_id, settings)
    if manifest.get("base_model") != loaded.name:
        raise UserError(
            f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, not {loaded.name!r}"
        )
    params = dict(loaded.model.named_parameters())
    originals: dict[str, torch.Tensor] = {}
    try:
        apply_overlay(loaded.model, variant_id, settings, originals=originals)
        yield loaded
    finally:
        for name, dense in originals.items():
            params[name].data = dense


def load_variant(model_reference: str, variant_id: str, **load_options):
    """A fresh copy of the base model with the variant applied (owned by the caller)."""
    from backend.models.loader import load_model

    manifest = read_manifest(variant_id)
    if model_reference and manifest.get("base_model") != model_reference:
        raise UserError(
            f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, not {model_reference!r}"
        )
    loaded = load_model(manifest["base_model"], **load_options)
    apply_overlay(loaded.model, variant_id)
    loaded.extra["variant_id"] = variant_id
    return loaded
