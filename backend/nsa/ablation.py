"""Zeroing neurons in the dense model, for the ablation checks of ``backend.nsa.causal``.

Zeroing is done on the down projection's input by ``neuron_hooks``, so the shared model's
weights are never touched; one batch row per condition (intact, the NSA neurons, each matched
random draw) lets a whole check run as one forward pass per text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Self

import torch

from backend.models.hooks import neuron_hooks


class NeuronAblation:
    """Context manager zeroing neurons in every forward pass, through ``neuron_hooks``.

    ``neurons`` is ``{layer: [indices]}`` applied to every batch row, or a list of such dicts,
    one per batch row (row r of the batch loses ``neurons[r]``): the intact model, the NSA
    neurons and each random draw then run as one batched forward pass.
    """

    def __init__(self, model, adapter,
                 neurons: Mapping[int, Sequence[int]] | Sequence[Mapping[int, Sequence[int]]]) -> None:
        rows = [neurons] if isinstance(neurons, Mapping) else list(neurons)
        width = adapter.neuron_count(model)
        self._model, self._adapter = model, adapter
        self._masks: dict[int, torch.Tensor] = {}  # layer -> [rows, neurons], True = zeroed
        for layer in sorted({layer for row in rows for layer, indices in row.items() if indices}):
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, row in enumerate(rows):
                mask[r, list(row.get(layer, ()))] = True
            self._masks[layer] = mask
        self._hooks = ExitStack()

    @staticmethod
    def _zeroing_hook(mask: torch.Tensor):
        def zero(neurons: torch.Tensor) -> torch.Tensor:  # [batch, tokens, neurons]
            # One mask row applies to the whole batch (it broadcasts); else one per batch row.
            return neurons.masked_fill(mask.to(neurons.device)[:, None, :], 0)  # a copy: the input stays intact

        return zero

    def __enter__(self) -> Self:
        functions = {layer: self._zeroing_hook(mask) for layer, mask in self._masks.items()}
        self._hooks.enter_context(neuron_hooks(self._model, self._adapter, functions))
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.close()
