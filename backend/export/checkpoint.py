"""Write a pruned variant as a standard checkpoint folder that loads without PruneLens.

Two formats:

- ``hf``: ``config.json``, the tokenizer files and ``model.safetensors`` with the pruned weights
  dense (zeros stored as zeros). ``AutoModelForCausalLM.from_pretrained(DIR)``, lm-eval's
  ``--model hf`` and vLLM read it as any other checkpoint.
- ``compressed-tensors``: the same folder, but every pruned linear stored in the
  compressed-tensors sparse format (``sparse-24-bitmask`` for 2:4, ``sparse-bitmask`` for other
  patterns: kept values + a packed bitmask) with the ``quantization_config`` that the package's
  ``ModelCompressor.from_pretrained(DIR).decompress(DIR, model)`` reads back.

Both add a model card (README.md). The folder is written beside the target and renamed when
complete, so a failed export never leaves a half-written checkpoint.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from backend.errors import UserError
from backend.storage import atomic_directory

if TYPE_CHECKING:
    from transformers import PreTrainedModel

EXPORT_FORMATS = ("hf", "compressed-tensors")
# The last compressed-tensors release with sparse compressors (0.15 removed them); its
# transformers<5 pin is conservative, so it is installed with --no-deps (see docs/export.md).
COMPRESSED_TENSORS_HINT = "pip install --no-deps compressed-tensors==0.14.0.1"


@dataclass
class ExportResult:
    path: Path
    export_format: str
    variant_id: str
    achieved_sparsity: float | None
    structured_shrunk: bool


def shrink_structured_if_available(model: PreTrainedModel, manifest: dict) -> tuple[PreTrainedModel, bool]:
    """A structured (neuron-removing) variant as a smaller model; returns (model, shrunk?).

    The removed MLP neurons are sliced out (``backend.pruning.shrink.shrunk_model``: a smaller
    copy with a reduced ``intermediate_size``; ``model`` itself is not changed). Families whose
    config has no MLP width to reduce keep the full shapes with the zeroed neurons, which loads
    anywhere and gives the same logits; other variants are returned as they are.
    """
    if (manifest.get("spec") or {}).get("kind") != "neurons":
        return model, False
    from backend.models.adapters import adapter_for
    from backend.pruning.shrink import SHRINKABLE_FAMILIES, shrunk_model

    adapter = adapter_for(model)
    if adapter.family not in SHRINKABLE_FAMILIES:
        return model, False
    small, _sizes = shrunk_model(model, adapter)
    return small, True


def drop_blocks_if_depth(model: PreTrainedModel, manifest: dict) -> PreTrainedModel:
    """A depth variant without its dropped decoder blocks (a copy); other variants as they are."""
    if manifest.get("dropped_blocks") is None:
        return model
    from backend.models.adapters import adapter_for
    from backend.pruning.depth import dropped_model

    return cast("PreTrainedModel", dropped_model(model, adapter_for(model), manifest["dropped_blocks"]))


def _pruned_linear_names(loaded) -> list[str]:
    """Module names of the prunable linears (what the pruning engine may have changed)."""
    names = {id(module): name for name, module in loaded.model.named_modules()}
    return [names[id(module)]
            for layer in loaded.adapter.decoder_layers(loaded.model)
            for module in loaded.adapter.prunable_linears(layer).values()]


def _check_request(manifest: dict, export_format: str, target: Path) -> None:
    if export_format not in EXPORT_FORMATS:
        raise UserError(f"unknown export format {export_format!r}: use {' or '.join(EXPORT_FORMATS)}")
    if target.exists():
        raise UserError(f"{target}: already exists; give a new folder name")
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: folder does not exist")
    if export_format == "compressed-tensors":
        if manifest.get("dropped_blocks") is not None:
            raise UserError("depth variants export as --format hf (the blocks are removed); "
                            "compressed-tensors stores weight sparsity (N:M or unstructured)")
        if (manifest.get("spec") or {}).get("kind") == "neurons":
            raise UserError("structured (neuron) variants export as --format hf; compressed-tensors "
                            "stores weight sparsity (N:M or unstructured)")
        try:
            from compressed_tensors.compressors import ModelCompressor  # noqa: F401
            from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig  # noqa: F401
        except ImportError as exc:
            raise UserError("--format compressed-tensors needs the compressed-tensors sparse "
                            f"compressors: {COMPRESSED_TENSORS_HINT}") from exc


def _compressed_state(loaded, manifest: dict):
    """(compressor, compressed state dict) of the model with its pruned linears bit-masked."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

    targets = _pruned_linear_names(loaded)
    modules = dict(loaded.model.named_modules())
    if not all(isinstance(modules[name], torch.nn.Linear) for name in targets):
        # GPT-2's Conv1D stores [in, out]: bitmask groups would run along outputs, not inputs.
        raise UserError("compressed-tensors export needs torch Linear layers; export this model "
                        "with --format hf")
    spec = manifest.get("spec") or {}
    overall = (manifest.get("achieved_sparsity") or {}).get("overall") or 0.0
    if spec.get("kind") == "nm" and (spec.get("n"), spec.get("m")) == (2, 4):
        config = Sparse24BitMaskConfig(global_sparsity=overall, sparsity_structure="2:4", targets=targets)
    else:
        structure = f"{spec['n']}:{spec['m']}" if spec.get("kind") == "nm" else "unstructured"
        config = BitmaskConfig(global_sparsity=overall, sparsity_structure=structure, targets=targets)
    compressor = ModelCompressor(sparsity_config=config)
    return compressor, compressor.compress(loaded.model)


def _write_checkpoint(loaded, manifest: dict, export_format: str, staging: Path) -> bool:
    """Write weights, config and tokenizer into ``staging``; True when structured neurons were dropped."""
    model, shrunk = shrink_structured_if_available(loaded.model, manifest)
    model = drop_blocks_if_depth(model, manifest)
    if export_format == "hf":
        model.save_pretrained(staging)
    else:
        compressor, state = _compressed_state(loaded, manifest)
        model.save_pretrained(staging, state_dict=state)
        compressor.update_config(str(staging))
    loaded.tokenizer.save_pretrained(staging)
    return shrunk


def export_variant(variant_id: str, out_dir: str | Path, *, export_format: str = "hf",
                   loaded=None, settings=None) -> ExportResult:
    """Export ``variant_id`` to the new folder ``out_dir``.

    ``loaded`` is the dense base model already in memory (the API's pool); it is turned into the
    variant for the write and restored after. Without it the base model is loaded here.
    """
    from backend.export.card import model_card, stored_results
    from backend.pruning.variants import apply_overlay, read_manifest, variant_applied

    manifest = read_manifest(variant_id, settings)
    target = Path(out_dir).expanduser().absolute()
    _check_request(manifest, export_format, target)
    if loaded is None:
        from backend.models.loader import load_model

        loaded = load_model(manifest["base_model"], settings=settings)
        apply_overlay(loaded.model, variant_id, settings)
        applied: AbstractContextManager[Any] = nullcontext(loaded)
    else:
        applied = variant_applied(loaded, variant_id, settings)
    variant_results, dense_results = stored_results(manifest, settings)
    with applied, atomic_directory(target) as staging:
        shrunk = _write_checkpoint(loaded, manifest, export_format, staging)
        note = None
        if shrunk:
            note = ("Structured variant: the removed MLP neurons are sliced out, so the MLP is "
                    "narrower than the base model's (see intermediate size in config.json).")
        elif manifest.get("dropped_blocks") is not None:
            note = (f"Depth variant: decoder blocks {manifest['dropped_blocks']} of the base model are removed "
                    f"({manifest['layers']['dense']} -> {manifest['layers']['kept']} layers).")
        elif (manifest.get("spec") or {}).get("kind") == "neurons":
            note = ("Structured variant: the removed MLP neurons are stored as zero rows/columns "
                    "at the full shapes (same outputs as a smaller model).")
        card = model_card(manifest, export_format, variant_results=variant_results,
                          dense_results=dense_results, structured_note=note)
        (staging / "README.md").write_text(card, encoding="utf-8")
    return ExportResult(target, export_format, variant_id,
                        (manifest.get("achieved_sparsity") or {}).get("overall"), shrunk)
