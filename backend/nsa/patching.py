"""Activation patching: do the selected neurons' dense activations give back what a variant lost?

A neuron is a down-projection input (see ``backend.nsa.capture``). For each labelled example
the dense model runs once (``dense_run``: its label margin, and the neurons it produced at
every token of every forward call). Then the variant runs once as a batch of *condition rows*
(``patched_log_probs``), each row with a different set of neurons replaced, at every token, by
their dense values:

- row 0 (``VARIANT_ROW``): nothing replaced, the variant as it is;
- row 1 (``SELECTED_ROW``): the selected neurons;
- row 2 (``ALL_ROW``): every neuron of the selected neurons' layers (the upper bound of
  patching in those layers);
- rows 3.. (``FIRST_DRAW_ROW``): one matched-random neuron set each (``matched_null``).

``recovery = (m_patched - m_variant) / (m_dense - m_variant)``. Patching replaces activations,
not weights: a variant whose down projections (or attention) were pruned too differs from the
dense model even with every neuron patched. Patching every neuron of every layer gives back the
dense margin exactly only when the variant changed nothing but what feeds the neurons.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backend.models.hooks import NeuronFn, neuron_hooks
from backend.nsa.ablation import NeuronAblation
from backend.nsa.capture import NeuronCapture
from backend.nsa.probe import ProbeEncoding, label_log_probs

VARIANT_ROW, SELECTED_ROW, ALL_ROW, FIRST_DRAW_ROW = 0, 1, 2, 3
INTACT_ROW, ABLATED_ROW, FIRST_ABLATION_DRAW_ROW = 0, 1, 2


class _CallRecorder(NeuronCapture):
    """Keeps every forward call's neurons of ``kept`` layers (a multi-token label takes one call
    per label) and, for every layer, its per-neuron activation level sum_t |a_t| of call 0."""

    def __init__(self, model, adapter, kept: Sequence[int]) -> None:
        super().__init__(model, adapter, None)
        self._kept = set(kept)
        self.calls: dict[int, list[torch.Tensor]] = {layer: [] for layer in self._kept}
        self.levels: dict[int, torch.Tensor] = {}

    def hook_for(self, layer_index: int):
        def record(neurons: torch.Tensor) -> None:
            neurons = neurons.detach()[0]  # [tokens, neurons] (batch of one)
            if layer_index not in self.levels:
                self.levels[layer_index] = neurons.abs().sum(0).float().cpu()  # [neurons]
            if layer_index in self._kept:
                self.calls[layer_index].append(neurons.clone())

        return record


@dataclass
class DenseRun:
    """One example through the dense model."""

    probe: ProbeEncoding
    label: int | None  # index into the task's label words (None: not known)
    log_probs: torch.Tensor  # [2] dense label log-probs
    neurons: dict[int, list[torch.Tensor]]  # layer -> one [tokens, neurons] per forward call
    levels: torch.Tensor  # [layers, neurons] sum over the prompt's tokens of |a| (dense)


@torch.inference_mode()
def dense_run(model, adapter, probe: ProbeEncoding, label: int | None, kept_layers: Sequence[int]) -> DenseRun:
    """The dense model on one probe: label log-probs, kept layers' neurons, every layer's levels."""
    with _CallRecorder(model, adapter, kept_layers) as recorder:
        log_probs = label_log_probs(model, probe)[0]
    levels = torch.stack([recorder.levels[layer] for layer in sorted(recorder.levels)])
    return DenseRun(probe, label, log_probs.float().cpu(), recorder.calls, levels)


def condition_masks(selected: torch.Tensor, draws: torch.Tensor, neurons_per_layer: int) -> dict[int, torch.Tensor]:
    """The patching rows as per-layer masks ``{layer: [rows, neurons] bool}`` (True = patched).

    ``selected``: ``[k]`` flat ids ``layer * neurons_per_layer + index``; ``draws``:
    ``[draws, k]`` flat ids of the matched-random sets. Rows: variant, selected, all neurons of
    the selected layers, then one per draw.
    """
    rows = FIRST_DRAW_ROW + draws.shape[0]
    layers = sorted({int(flat) // neurons_per_layer for flat in selected.tolist()})
    masks = {}
    for layer in layers:
        mask = torch.zeros(rows, neurons_per_layer, dtype=torch.bool)
        for row, ids in ((SELECTED_ROW, selected), *((FIRST_DRAW_ROW + d, draw) for d, draw in enumerate(draws))):
            in_layer = ids[ids // neurons_per_layer == layer] % neurons_per_layer
            mask[row, in_layer] = True
        mask[ALL_ROW] = True
        masks[layer] = mask
    return masks


def _dense_replacement(mask: torch.Tensor, calls: list[torch.Tensor]) -> NeuronFn:
    """Patched rows take the dense neurons of the same forward call (calls in order)."""
    pending = iter(calls)

    def replace(neurons: torch.Tensor) -> torch.Tensor:  # [rows, tokens, neurons]
        dense = next(pending, None)  # [tokens, neurons]
        if dense is None:
            raise RuntimeError("the patched model made more forward calls than the dense run recorded")
        dense = dense.to(neurons.device, neurons.dtype)
        return torch.where(mask.to(neurons.device)[:, None, :], dense[None], neurons)

    return replace


@torch.inference_mode()
def patched_log_probs(model, adapter, run: DenseRun, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """``[rows, 2]`` label log-probs of ``model`` (the variant) with each row's neurons patched to
    the dense values of ``run``, all rows in one batched forward pass per label call."""
    rows = next(iter(masks.values())).shape[0]
    replacements = {layer: _dense_replacement(mask, run.neurons[layer]) for layer, mask in masks.items()}
    with neuron_hooks(model, adapter, replacements):
        return label_log_probs(model, run.probe, batch=rows).float().cpu()


def flat_to_rows(selected: torch.Tensor, draws: torch.Tensor, neurons_per_layer: int) -> list[dict[int, list[int]]]:
    """Ablation rows for ``NeuronAblation``: intact, the selected set, then each draw."""
    def as_dict(ids: torch.Tensor) -> dict[int, list[int]]:
        grouped: dict[int, list[int]] = {}
        for flat in ids.tolist():
            grouped.setdefault(flat // neurons_per_layer, []).append(flat % neurons_per_layer)
        return grouped

    return [{}, as_dict(selected), *(as_dict(draw) for draw in draws)]


@torch.inference_mode()
def ablated_log_probs(model, adapter, probe: ProbeEncoding, rows: list[dict[int, list[int]]]) -> torch.Tensor:
    """``[rows, 2]`` dense label log-probs with each row's neurons zeroed (row 0 intact)."""
    with NeuronAblation(model, adapter, rows):
        return label_log_probs(model, probe, batch=len(rows)).float().cpu()
