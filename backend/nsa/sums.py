"""Every neuron's activation mass on a text's token groups, the reduction NSA's statistics run on.

For one model state (dense or a variant) on one text, each neuron j keeps three numbers
(plus one per influential word): ``on_j = sum_{t in S} A_tj`` over the influential tokens,
``off_j`` over the other real tokens, and ``words_wj = max_{t in word w} A_tj``. Any neuron
set's drop, its layers' baseline, a cross-fitted selection measured on other texts, and the
hundreds of random sets of the matched null are all sums of these: one capture pass per text
and state serves them all, and a text costs ``(2 + words) x layers x neurons`` floats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backend.nsa.scoring import (
    NEGLIGIBLE_FRACTION,
    LayerReducer,
    LayerSums,
    activation_magnitude,
    layer_sums,
    observe_layer,
    scores_from_totals,
)


@dataclass
class StateSums:
    """One model state on one text, all layers: ``on``/``off`` ``[layers, neurons]``,
    ``words`` ``[words, layers, neurons]``. Layers that were not captured are zero."""

    on: torch.Tensor
    off: torch.Tensor
    words: torch.Tensor

    @classmethod
    def from_layers(cls, per_layer: dict[int, LayerSums], layer_count: int, neuron_count: int,
                    word_count: int) -> StateSums:
        on = torch.zeros((layer_count, neuron_count))
        off = torch.zeros((layer_count, neuron_count))
        words = torch.zeros((word_count, layer_count, neuron_count))
        for layer, sums in per_layer.items():
            on[layer], off[layer], words[:, layer] = sums.on, sums.off, sums.words
        return cls(on, off, words)

    @property
    def total(self) -> torch.Tensor:
        """``[layers, neurons]`` total A over the text's real tokens: the neuron's activation level."""
        return self.on + self.off

    def scores(self, negligible_fraction: float = NEGLIGIBLE_FRACTION) -> dict[int, torch.Tensor]:
        """Step 2's per-layer scores from the sums (the same rule as ``scoring.neuron_scores``)."""
        return {layer: scores_from_totals(self.on[layer], self.total[layer], negligible_fraction)[0]
                for layer in range(self.on.shape[0])}


@torch.inference_mode()
def observe_with_sums(
    loaded,
    input_ids: Sequence[int],
    indices_by_layer: dict[int, list[int]],
    layers: Sequence[int],
    influential: torch.Tensor,
    scored: torch.Tensor,
    word_tokens: Sequence[Sequence[int]],
    mode: str = "abs",
) -> tuple[dict, dict[int, LayerSums]]:
    """One forward pass: the chosen neurons' columns and layer masses (as ``scoring.observe_text``)
    for the layers of ``indices_by_layer``, and every neuron's ``LayerSums`` for ``layers``."""
    device = loaded.device
    influential, scored = influential.to(device), scored.to(device)

    def reduce(layer: int, neurons: torch.Tensor):
        observed = observe_layer(neurons, indices_by_layer[layer], word_tokens, mode) if layer in indices_by_layer \
            else None
        sums = layer_sums(activation_magnitude(neurons.float(), mode), influential, scored, word_tokens) \
            if layer in wanted else None
        return observed, sums

    wanted = set(layers)
    reducer = LayerReducer(loaded.model, loaded.adapter, sorted(wanted | set(indices_by_layer)), reduce)
    results = reducer.run(torch.tensor([list(input_ids)], device=device))
    observed = {layer: result[0] for layer, result in results.items() if result[0] is not None}
    return observed, {layer: result[1] for layer, result in results.items() if result[1] is not None}
