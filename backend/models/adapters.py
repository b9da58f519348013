"""Architecture adapters: where each model family keeps its decoder layers, prunable linears and neurons.

The neuron tensor (see docs/architecture.md) is the *input* of a layer's MLP output projection:
``act(gate(x)) * up(x)`` before ``down_proj`` (LLaMA family), ``ReLU(fc1(x))`` before ``fc2``
(OPT), ``GELU(c_fc(x))`` before ``c_proj`` (GPT-2). Neuron ``j`` of a layer is column ``j`` of
that projection's ``[out, in]`` weight, and row ``j`` of each MLP input projection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from backend.errors import UserError

PRUNABLE_TYPES = (nn.Linear, Conv1D)


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Names, relative to the model or to one decoder layer, of what pruning and NSA touch."""

    family: str
    layer_paths: tuple[str, ...]  # candidate paths of the decoder-layer ModuleList, first match wins
    mlp_inputs: tuple[str, ...]  # projections whose output rows are the neurons
    mlp_output: str  # projection whose input is the neuron vector
    # OPT reshapes hidden states to [batch*tokens, hidden] before its MLP, so its neuron tensor
    # reaches the down projection 2-D; the decoder layer's input still has the [batch, tokens] shape.
    mlp_flattens_tokens: bool = False

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        for path in self.layer_paths:
            found = _get_submodule(model, path)
            if isinstance(found, nn.ModuleList):
                return found
        raise UserError(f"{self.family} model without decoder layers at {' or '.join(self.layer_paths)}")

    def prunable_linears(self, layer: nn.Module) -> dict[str, nn.Module]:
        """All Linear / Conv1D modules inside one decoder layer, by name relative to the layer."""
        return {name: mod for name, mod in layer.named_modules() if isinstance(mod, PRUNABLE_TYPES)}

    def neuron_module(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.mlp_output)

    def neuron_input_modules(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.get_submodule(name) for name in self.mlp_inputs]

    def batched_neurons(self, neurons: torch.Tensor, token_shape: torch.Size | None) -> torch.Tensor:
        """The down projection's input as ``[batch, tokens, neurons]``, a view.

        ``token_shape``: the ``[batch, tokens]`` of the decoder layer's input, needed (and
        recorded by ``backend.models.hooks.neuron_hooks``) only where the MLP flattens tokens.
        """
        if self.mlp_flattens_tokens:
            assert token_shape is not None, "neuron_hooks records it wherever the MLP flattens tokens"
            return neurons.reshape(*token_shape, neurons.shape[-1])
        return neurons

    def neuron_count(self, model: nn.Module) -> int:
        """Neurons per layer (the MLP hidden size)."""
        return weight_matrix(self.neuron_module(self.decoder_layers(model)[0])).shape[1]


_LLAMA_LIKE = ArchitectureAdapter(
    family="llama",
    layer_paths=("model.layers", "model.language_model.layers", "language_model.model.layers"),
    mlp_inputs=("mlp.gate_proj", "mlp.up_proj"),
    mlp_output="mlp.down_proj",
)
_OPT = ArchitectureAdapter(
    family="opt",
    layer_paths=("model.decoder.layers",),
    mlp_inputs=("fc1",),
    mlp_output="fc2",
    mlp_flattens_tokens=True,
)
_GPT2 = ArchitectureAdapter(
    family="gpt2",
    layer_paths=("transformer.h",),
    mlp_inputs=("mlp.c_fc",),
    mlp_output="mlp.c_proj",
)

# config.model_type -> adapter. The LLaMA family shares module names down to the MLP.
ADAPTERS: dict[str, ArchitectureAdapter] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "opt": _OPT,
    "gpt2": _GPT2,
}


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    adapter = ADAPTERS.get(model_type or "")
    if adapter is None:
        supported = ", ".join(sorted(ADAPTERS))
        raise UserError(f"unsupported architecture {model_type!r}; supported: {supported}")
    return adapter


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The module's weight as ``[out_features, in_features]``, a view that shares storage.

    GPT-2's Conv1D stores ``[in, out]``; its transpose is returned so that every pruning
    method sees one layout. Writing into the returned tensor writes into the module.
    """
    if isinstance(module, Conv1D):
        return module.weight.data.t()
    if isinstance(module, nn.Linear):
        return module.weight.data
    raise TypeError(f"not a prunable module: {type(module).__name__}")


def in_module_layout(module: nn.Module, matrix: torch.Tensor) -> torch.Tensor:
    """Turn an ``[out, in]`` matrix (a mask) into the module's own weight layout."""
    return matrix.t() if isinstance(module, Conv1D) else matrix


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None
