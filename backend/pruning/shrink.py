"""Real shrinking: a structured (whole-neuron) variant becomes a smaller model on disk.

The removed neurons are sliced out: rows (and bias entries) of the MLP input projections,
columns of the down projection. The result is an ordinary checkpoint of the same architecture
with a smaller ``intermediate_size`` (LLaMA family) / ``ffn_dim`` (OPT) / ``n_inner`` (GPT-2),
loadable with plain ``transformers.AutoModelForCausalLM.from_pretrained`` (no custom code).

Per-layer sizes: none of these configs takes a size per layer (their MLP reads one
``intermediate_size``), so the rule is uniform: every layer keeps ``max_l kept_l`` neurons. The
structured methods remove exactly ``round(ratio · n)`` per layer, so nothing is padded for them;
for a variant whose layers differ, a layer short of the maximum keeps some of its removed
neurons as all-zero rows/columns, which contribute exactly 0 (act(0)·0 = 0 for SwiGLU; ReLU/GELU
of a zero row with zero bias is 0 and its down column is 0), so the logits are unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from backend.errors import UserError
from backend.models.adapters import in_module_layout, weight_matrix
from backend.storage import atomic_directory

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# config attribute holding the MLP width, per adapter family
_WIDTH_ATTRIBUTE = {"llama": "intermediate_size", "opt": "ffn_dim", "gpt2": "n_inner"}
SHRINKABLE_FAMILIES = frozenset(_WIDTH_ATTRIBUTE)


def removed_neurons(adapter, layer) -> torch.Tensor:
    """Bool [n]: neurons whose down column and input rows (and input biases) are all zero."""
    removed = (weight_matrix(layer.get_submodule(adapter.mlp_output)) == 0).all(dim=0)
    for name in adapter.mlp_inputs:
        module = layer.get_submodule(name)
        removed &= (weight_matrix(module) == 0).all(dim=1)
        if getattr(module, "bias", None) is not None:
            removed &= module.bias == 0
    return removed


def kept_neurons_per_layer(model, adapter) -> list[torch.Tensor]:
    """The neurons each layer keeps under the uniform rule (module docstring): LongTensor [kept]."""
    removed = [removed_neurons(adapter, layer).cpu() for layer in adapter.decoder_layers(model)]
    width = max(int((~mask).sum()) for mask in removed)
    kept = []
    for mask in removed:
        indices = torch.nonzero(~mask).squeeze(1)
        if indices.numel() < width:  # pad with removed (all-zero) neurons: exact, see above
            padding = torch.nonzero(mask).squeeze(1)[: width - indices.numel()]
            indices = torch.sort(torch.cat([indices, padding])).values
        kept.append(indices)
    return kept


def _slice_linear(module, keep: torch.Tensor, *, rows: bool) -> None:
    """Keep rows (outputs) or columns (inputs) ``keep`` of a Linear / Conv1D, in place."""
    matrix = weight_matrix(module)  # [out, in]
    sliced = matrix[keep] if rows else matrix[:, keep]
    module.weight = torch.nn.Parameter(in_module_layout(module, sliced).contiguous())
    if rows and getattr(module, "bias", None) is not None:
        module.bias = torch.nn.Parameter(module.bias.detach()[keep].contiguous())
    if hasattr(module, "out_features"):
        module.out_features, module.in_features = sliced.shape
    if hasattr(module, "nf"):  # GPT-2 Conv1D records its output width
        module.nf = sliced.shape[0]


@torch.no_grad()
def shrunk_model(model: PreTrainedModel, adapter=None) -> tuple[PreTrainedModel, dict]:
    """A smaller copy of ``model`` (a structured variant already applied) without its removed neurons.

    model: an HF causal LM whose removed neurons are zero (rows of the MLP input projections, and
    their biases, and columns of the down projection); it is not changed. Returns (the copy, with
    the reduced MLP width in its config, ready for ``save_pretrained``; {"intermediate_size",
    "dense_size", "parameters", "dense_parameters"}). This is what an export of a structured
    variant calls (backend/export: ``shrink_structured_if_available``).
    """
    import copy

    from backend.models.adapters import adapter_for

    adapter = adapter or adapter_for(model)
    family = adapter.family
    if family not in _WIDTH_ATTRIBUTE:
        raise UserError(f"shrinking is not supported for the {family} family")
    kept = kept_neurons_per_layer(model, adapter)
    dense_parameters = sum(p.numel() for p in model.parameters())
    dense_size = weight_matrix(adapter.neuron_module(adapter.decoder_layers(model)[0])).shape[1]
    small = copy.deepcopy(model)
    for layer, keep in zip(adapter.decoder_layers(small), kept, strict=True):
        keep = keep.to(next(layer.parameters()).device)
        for name in adapter.mlp_inputs:
            _slice_linear(layer.get_submodule(name), keep, rows=True)
        _slice_linear(layer.get_submodule(adapter.mlp_output), keep, rows=False)
        mlp = layer.get_submodule(adapter.mlp_output.rsplit(".", 1)[0]) if "." in adapter.mlp_output else None
        if mlp is not None and hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep.numel())
    width = int(kept[0].numel())
    setattr(small.config, _WIDTH_ATTRIBUTE[family], width)
    return small, {"intermediate_size": width, "dense_size": int(dense_size),
                   "parameters": sum(p.numel() for p in small.parameters()),
                   "dense_parameters": dense_parameters}


def shrink_structured(loaded, variant_id: str, out_dir: str | Path, *, settings=None) -> dict:
    """Write the structured variant ``variant_id`` of ``loaded`` as a smaller model in ``out_dir``.

    loaded: the dense base model (a LoadedModel, unchanged on return); variant_id: a variant made
    by a structured method (mi, random-neurons, magnitude-neurons, flap, structured-obs);
    out_dir: a folder that must not exist yet (written atomically: staged, then renamed).
    The folder holds safetensors weights, config.json with the reduced MLP width and the
    tokenizer; ``AutoModelForCausalLM.from_pretrained(out_dir)`` computes the same logits as the
    variant applied to the base model. Returns shrunk_model's figures plus "path". Raises
    UserError for a variant that is not structured or an existing ``out_dir``.
    """
    from backend.pruning.variants import read_manifest, variant_applied

    manifest = read_manifest(variant_id, settings)
    if manifest.get("spec", {}).get("kind") != "neurons":
        raise UserError(f"variant {variant_id!r} is not structured (method {manifest.get('method')!r}); "
                        "only whole-neuron variants can be shrunk")
    target = Path(out_dir)
    if target.exists():
        raise UserError(f"{target} already exists; choose a new folder")
    with variant_applied(loaded, variant_id, settings):
        small, info = shrunk_model(loaded.model, loaded.adapter)
    with atomic_directory(target) as staging:
        small.save_pretrained(staging, safe_serialization=True)
        loaded.tokenizer.save_pretrained(staging)
    return {"path": str(target), **info}
