"""Capture neuron activations: the input of each decoder layer's MLP output projection.

``NeuronCapture`` is a context manager over ``backend.models.hooks.neuron_hooks``. It never
changes what the model computes (its functions return nothing, so the input flows on
untouched) and removes its hooks on exit, also when the forward pass raised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

import torch
from torch import nn

from backend.data.encoding import encode_text
from backend.models.adapters import ArchitectureAdapter
from backend.models.hooks import NeuronFn, checked_layers, neuron_hooks

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel


class NeuronCapture:
    """Records ``{layer: Tensor[batch, tokens, neurons]}`` for the requested layers.

    Each forward pass overwrites the previous one's tensors. ``to_cpu`` moves them off the
    accelerator as they are produced (for long texts on large models); by default they stay
    where the model is, which costs nothing on top of the forward pass: the tensor is the
    one the MLP already built, kept alive by reference, not copied.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: ArchitectureAdapter,
        layers: Iterable[int] | None = None,
        *,
        to_cpu: bool = False,
    ) -> None:
        self.layers = checked_layers(model, adapter, layers)
        self._model, self._adapter = model, adapter
        self._to_cpu = to_cpu
        self._hooks = ExitStack()
        self.activations: dict[int, torch.Tensor] = {}

    def hook_for(self, layer_index: int) -> NeuronFn:
        """The neuron function for one layer. Subclasses override it to reduce activations as
        they are produced (see ``backend.nsa.scoring.LayerReducer``) instead of keeping them."""

        def record(neurons: torch.Tensor) -> None:  # [batch, tokens, neurons]
            neurons = neurons.detach()
            self.activations[layer_index] = neurons.to("cpu", copy=True) if self._to_cpu else neurons

        return record

    def batched(self, layer_index: int, batch_size: int) -> torch.Tensor:
        """The recorded activations of one layer as ``[batch, tokens, neurons]``."""
        neurons = self.activations[layer_index]
        return neurons.reshape(batch_size, -1, neurons.shape[-1])

    def __enter__(self) -> Self:
        self.activations = {}
        functions = {index: self.hook_for(index) for index in self.layers}
        self._hooks.enter_context(neuron_hooks(self._model, self._adapter, functions))
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        self._hooks.close()


@dataclass
class TextActivations:
    """Neuron activations of one text: tokens on axis 0, neurons on axis 1 of every tensor."""

    text: str
    tokens: list[str]
    # Character span [start, end) of each token in ``text``. Byte-level tokenizers may split one
    # character (an emoji) over several tokens; those tokens share the character's span.
    offsets: list[tuple[int, int]]
    input_ids: list[int]
    layers: dict[int, torch.Tensor]  # layer -> [tokens, neurons], float32 on CPU
    truncated: bool = False

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "tokens": self.tokens,
            "offsets": [list(span) for span in self.offsets],
            "truncated": self.truncated,
            "layers": {str(index): tensor.tolist() for index, tensor in self.layers.items()},
        }


@torch.inference_mode()
def capture_text(loaded: LoadedModel, text: str, layers: Sequence[int] | None = None) -> TextActivations:
    """Run ``text`` through the model once and return its neuron activations per layer."""
    encoded = encode_text(loaded.tokenizer, text, loaded.max_length)
    input_ids = torch.tensor([encoded.input_ids], device=loaded.device)
    with NeuronCapture(loaded.model, loaded.adapter, layers) as capture:
        loaded.model(input_ids=input_ids, use_cache=False)
    per_layer = {index: capture.batched(index, 1)[0].float().cpu() for index in capture.layers}
    return TextActivations(
        text=encoded.text,
        tokens=encoded.tokens,
        offsets=encoded.offsets,
        input_ids=encoded.input_ids,
        layers=per_layer,
        truncated=encoded.truncated,
    )
