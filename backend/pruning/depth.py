"""Depth pruning: remove whole decoder blocks, chosen by a registered depth method.

A depth method (``PruningMethod(blocks=choose, ...)``, e.g. ``methods/shortgpt.py``) returns the
indices of the ``drop_blocks`` blocks to remove from scores over the calibration windows. The
variant is stored like every other one, as an overlay on its base model: every prunable weight and
bias of a dropped block is zeroed, which makes the block's residual update exactly zero in the
pre-norm families we support (LLaMA, OPT with ``do_layer_norm_before``, GPT-2): the block passes its
input through unchanged, so evaluation, NSA and the neuron index read the variant with no new code.
The manifest records ``dropped_blocks`` and ``layers: {dense, kept}``; the export and the speed
measurement remove the blocks for real (``remove_blocks``, ``dropped_model``), so the checkpoint has K fewer decoder
layers and loads with plain ``AutoModelForCausalLM.from_pretrained``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import nn

from backend.errors import UserError
from backend.models.adapters import in_module_layout, weight_matrix
from backend.pruning.layers import propagate
from backend.pruning.registry import InputNeeds, LayerToPrune, MethodOptions, Pruned, PruningMethod
from backend.pruning.spec import SparsitySpec


class DepthOptions(MethodOptions):
    drop_blocks: int = Field(default=1, ge=1, le=4096,
                             description="decoder blocks to remove (fewer than the model has)")


@dataclass
class BlockContext:
    """What a depth method sees: the model, its decoder blocks and the calibration inputs."""

    loaded: object
    layers: nn.ModuleList
    inputs: object | None  # engine.LayerInputs (hidden per batch, calls per layer) or None

    def block_io(self, skip: frozenset[int] = frozenset()) -> Iterator[tuple[int, list[torch.Tensor],
                                                                           list[torch.Tensor]]]:
        """(index, inputs, outputs) of each block not in ``skip``, running the dense blocks in order and
        passing the hidden states through the skipped ones; per batch [batch, tokens, hidden]."""
        assert self.inputs is not None, "depth methods that score blocks read calibration data"
        hidden = self.inputs.hidden  # type: ignore[attr-defined]
        calls = self.inputs.calls  # type: ignore[attr-defined]
        device = self.loaded.device  # type: ignore[attr-defined]
        for index, layer in enumerate(self.layers):
            if index in skip:
                continue
            outputs = propagate(layer, hidden, calls[index], device)
            yield index, hidden, outputs
            hidden = outputs


@dataclass(frozen=True)
class BlockChoice:
    dropped: list[int]  # block indices, ascending
    scores: list[float | None] = field(default_factory=list)  # per block (None: not scored)
    info: dict = field(default_factory=dict)


# (context, the method's DepthOptions subclass) -> choice; Any: each method takes its own options class.
BlockChooser = Callable[[BlockContext, Any], BlockChoice]


def lowest_blocks(scores: list[float], count: int) -> list[int]:
    """Indices of the ``count`` lowest scores (ties: the lower index first), ascending."""
    order = sorted(range(len(scores)), key=lambda index: (scores[index], index))
    return sorted(order[:count])


def _never_per_layer(_layer: LayerToPrune, _options, _spec: SparsitySpec) -> list[Pruned]:
    raise AssertionError("the engine calls a depth method's blocks(), never prune()")


def depth_method(name: str, description: str, choose: BlockChooser, options: type[DepthOptions] = DepthOptions,
                 *, uses_data: bool = True) -> PruningMethod:
    """A registry entry for a method that drops whole decoder blocks chosen by ``choose``."""
    return PruningMethod(name=name, description=description, prune=_never_per_layer, options=options,
                         needs=InputNeeds() if uses_data else None, blocks=choose)


# ----------------------------------------------------------------------------- checks and variants


def check_fits(loaded, config) -> None:
    """UserError when the model cannot lose ``drop_blocks`` blocks this way."""
    count = len(loaded.adapter.decoder_layers(loaded.model))
    drop = config.method_options.drop_blocks
    if drop >= count:
        raise UserError(f"--drop-blocks {drop}: {loaded.name} has {count} decoder blocks; drop at most {count - 1}")
    if getattr(loaded.model.config, "do_layer_norm_before", True) is False:
        raise UserError(f"{loaded.name} normalises after each block (OPT post-LN): a zeroed block is not a "
                        "removed one there, so depth pruning is not offered")


def create_depth_variant(loaded, config, target: str, calibration_inputs, manifest_of, report, settings) -> dict:
    """Score the blocks, write the variant (zeroed blocks + their indices) and return its manifest."""
    import time

    from backend.pruning.engine import AppliedChanges
    from backend.pruning.variants import read_manifest, write_variant

    timings: dict[str, float] = {}
    adapter, model = loaded.adapter, loaded.model
    layers = adapter.decoder_layers(model)
    inputs = calibration_inputs(loaded, config, report, timings) if config.uses_calibration else None
    started = time.perf_counter()
    report(0.0, f"scoring {len(layers)} decoder blocks")
    choice = config.info.blocks(BlockContext(loaded, layers, inputs), config.method_options)
    timings["total_pruning"] = time.perf_counter() - started
    names = {id(module): name for name, module in model.named_modules()}
    applied = AppliedChanges()
    for index, layer in enumerate(layers):
        for linear_name, module in adapter.prunable_linears(layer).items():
            weight = weight_matrix(module)  # [out, in]
            applied.total += weight.numel()
            if index not in choice.dropped:
                continue
            prefix = f"{names[id(layer)]}.{linear_name}"
            applied.masks[f"{prefix}.weight"] = in_module_layout(
                module, torch.ones(weight.shape, dtype=torch.bool))
            if getattr(module, "bias", None) is not None:
                applied.masks[f"{prefix}.bias"] = torch.ones(module.bias.shape, dtype=torch.bool)
            applied.per_linear[prefix] = 1.0
            applied.pruned += weight.numel()
    drop = config.method_options.drop_blocks
    manifest = {**manifest_of(loaded, config, applied, timings),
                "sparsity": f"blocks:{drop}", "spec": {"kind": "blocks", "drop_blocks": drop},
                "dropped_blocks": list(choice.dropped),
                "layers": {"dense": len(layers), "kept": len(layers) - len(choice.dropped)},
                "block_scores": choice.scores, "method_notes": choice.info}
    report(1.0, "writing the variant")
    write_variant(target, manifest, masks=applied.masks, settings=settings)
    return read_manifest(target, settings)


def dropped_model(model: nn.Module, adapter, dropped: list[int]) -> nn.Module:
    """A copy of ``model`` without the decoder blocks ``dropped`` (``remove_blocks`` on a deep copy)."""
    smaller = copy.deepcopy(model)
    remove_blocks(smaller, adapter, dropped)
    return smaller


def remove_blocks(model: nn.Module, adapter, dropped: list[int]) -> None:
    """Remove the decoder blocks ``dropped`` from ``model`` in place: the config's layer count (and layer
    types) and every module's ``layer_idx`` (the attention's cache slot) follow the new positions."""
    layers = adapter.decoder_layers(model)
    kept = nn.ModuleList(layer for index, layer in enumerate(layers) if index not in set(dropped))
    for path in adapter.layer_paths:
        parent_path, _, attribute = path.rpartition(".")
        try:
            parent = model.get_submodule(parent_path) if parent_path else model
        except AttributeError:
            continue
        if isinstance(getattr(parent, attribute, None), nn.ModuleList):
            setattr(parent, attribute, kept)
            break
    for index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                setattr(module, "layer_idx", index)  # noqa: B010 - a plain attribute, not a submodule
    config: Any = model.config
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [kind for index, kind in enumerate(config.layer_types) if index not in set(dropped)]
    config.num_hidden_layers = len(kept)
