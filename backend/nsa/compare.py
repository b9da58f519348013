"""NSA step 3: what a pruned variant did to the selected neurons, always next to a baseline.

All drops are relative: ``drop = 1 - A_variant / A_dense`` over a set of (neuron, token)
pairs, so 0 means untouched, 1 means silenced and a negative drop means the neuron fires
more. A word's activation is the max of A over its tokens.

Neurons chosen for an extreme dense score regress toward the mean under *any* perturbation,
so a drop means little alone. Two baselines go with every drop:

- ``baseline_all_neurons``: the drop of all neurons of the same layers on the same tokens
  (each layer's ratio over all its neurons, averaged with weights = how many selected neurons
  sit in that layer);
- ``baseline_non_influential``: the selected neurons' own drop on the tokens that are *not*
  influential.

``excess_drop = drop_influential - baseline_all_neurons`` is what pruning took from these
neurons on these words beyond what it took from their layers in general.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from backend.nsa.scoring import LayerMass, Selection, activation_magnitude

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel


@dataclass
class TextObservation:
    """One model state (dense or a variant) on one text, restricted to what step 3 needs."""

    activations: torch.Tensor  # [tokens, selected] signed, columns in selection order
    layer_mass: dict[int, LayerMass]  # for each layer holding selected neurons


def assemble_observation(
    selection: Selection, per_layer: dict[int, tuple[torch.Tensor, LayerMass]]
) -> TextObservation:
    """Put per-layer ``([tokens, n_layer] columns, mass)`` results into selection order."""
    by_layer = selection.indices_by_layer()
    position = {layer: 0 for layer in by_layer}
    columns = []
    for neuron in selection.neurons:
        layer_columns, _ = per_layer[neuron.layer]
        columns.append(layer_columns[:, position[neuron.layer]])
        position[neuron.layer] += 1
    activations = torch.stack(columns, dim=1)  # [tokens, selected]
    return TextObservation(activations, {layer: per_layer[layer][1] for layer in by_layer})


def relative_drop(dense: torch.Tensor | float, variant: torch.Tensor | float) -> float | None:
    """``1 - variant / dense`` for two activation masses; None when the dense mass is 0."""
    dense, variant = float(dense), float(variant)
    if dense <= 0.0:
        return None
    return 1.0 - variant / dense


def word_activations(magnitude: torch.Tensor, word_tokens: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[words, neurons]``: each word's activation (max over its tokens) from ``[tokens, neurons]``."""
    if not word_tokens:
        return magnitude.new_zeros((0, magnitude.shape[1]))
    return torch.stack([magnitude[list(tokens)].amax(0) for tokens in word_tokens])


def _weighted_mean(values: list[float | None], weights: list[float]) -> float | None:
    pairs = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def compare_text(
    dense: TextObservation,
    variant: TextObservation,
    selection: Selection,
    influential: torch.Tensor,
    scored: torch.Tensor,
    word_tokens: Sequence[Sequence[int]],
    mode: str = "abs",
) -> dict:
    """Drops and baselines of one variant on one text (see the module docstring).

    influential, scored: ``[tokens]`` bool. Returns a JSON-ready dict with the text-level
    figures, per selected neuron (in selection order) and per influential word.
    """
    on = influential & scored  # influential tokens
    off = ~influential & scored  # the rest of the text
    a_dense = activation_magnitude(dense.activations, mode)  # [tokens, selected]
    a_variant = activation_magnitude(variant.activations, mode)
    words_dense = word_activations(a_dense, word_tokens)  # [words, selected]
    words_variant = word_activations(a_variant, word_tokens)

    layers = [neuron.layer for neuron in selection.neurons]
    counts = {layer: layers.count(layer) for layer in dict.fromkeys(layers)}
    layer_on = {
        layer: relative_drop(dense.layer_mass[layer].tokens[on].sum(), variant.layer_mass[layer].tokens[on].sum())
        for layer in counts
    }
    weights = [float(n) for n in counts.values()]

    neurons = []
    for k, neuron in enumerate(selection.neurons):
        neurons.append({
            "drop_influential": relative_drop(a_dense[on, k].sum(), a_variant[on, k].sum()),
            "drop_non_influential": relative_drop(a_dense[off, k].sum(), a_variant[off, k].sum()),
            "layer_baseline": layer_on[neuron.layer],
            "word_drops": [relative_drop(words_dense[w, k], words_variant[w, k]) for w in range(len(word_tokens))],
        })

    words = []
    for w in range(len(word_tokens)):
        per_layer = [relative_drop(dense.layer_mass[layer].words[w], variant.layer_mass[layer].words[w])
                     for layer in counts]
        words.append({
            "drop": relative_drop(words_dense[w].sum(), words_variant[w].sum()),
            "baseline_all_neurons": _weighted_mean(per_layer, weights),
        })

    drop = relative_drop(a_dense[on].sum(), a_variant[on].sum())
    baseline = _weighted_mean(list(layer_on.values()), weights)
    return {
        "drop_influential": drop,
        "baseline_all_neurons": baseline,
        "baseline_non_influential": relative_drop(a_dense[off].sum(), a_variant[off].sum()),
        "excess_drop": None if drop is None or baseline is None else drop - baseline,
        "neurons": neurons,
        "words": words,
    }


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def aggregate_comparisons(per_text: Sequence[dict]) -> dict:
    """Mean over texts of the text-level figures of one variant (texts count equally)."""
    keys = ("drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop")
    return {key: mean_or_none([row[key] for row in per_text]) for key in keys}


# ----------------------------------------------------------------------------- weights


def neuron_weight_slices(loaded: LoadedModel, selection: Selection) -> list[dict[str, torch.Tensor]]:
    """Per selected neuron: its input-projection rows and output-projection column, cloned.

    ``{"inputs": [sum of input widths], "output": [output width]}`` (gate+up rows for
    LLaMA, the fc1 row for OPT, the c_fc row for GPT-2; the down/fc2/c_proj column).
    """
    from backend.models.adapters import weight_matrix

    layers = loaded.adapter.decoder_layers(loaded.model)
    slices = []
    for neuron in selection.neurons:
        layer = layers[neuron.layer]
        rows = [weight_matrix(m)[neuron.index] for m in loaded.adapter.neuron_input_modules(layer)]
        column = weight_matrix(loaded.adapter.neuron_module(layer))[:, neuron.index]
        slices.append({"inputs": torch.cat(rows).detach().cpu().clone(), "output": column.detach().cpu().clone()})
    return slices


def weights_removed(dense: Sequence[dict[str, torch.Tensor]], variant: Sequence[dict[str, torch.Tensor]]) -> list[dict]:
    """Per neuron, the fraction of its weights that were non-zero in the dense model and are zero now."""
    rows = []
    for before, after in zip(dense, variant, strict=True):
        removed = {part: int(((before[part] != 0) & (after[part] == 0)).sum()) for part in ("inputs", "output")}
        sizes = {part: before[part].numel() for part in ("inputs", "output")}
        rows.append({
            "fraction": sum(removed.values()) / sum(sizes.values()),
            "inputs": removed["inputs"] / sizes["inputs"],
            "output": removed["output"] / sizes["output"],
        })
    return rows


# ----------------------------------------------------------------------------- heatmap


def heatmap(
    tokens: list[str],
    offsets: list[tuple[int, int]],
    selection: Selection,
    dense: TextObservation,
    variants: dict[str, TextObservation],
    scored: torch.Tensor,
) -> dict:
    """Per-token signed activations of each selected neuron, dense and per variant.

    ``scale`` is the dense model's max |a| of that neuron over the text's real tokens, so that
    one colour scale per neuron makes dense and pruned rows comparable.
    """
    dense_abs = dense.activations.abs()[scored]  # [scored tokens, selected]
    scales = dense_abs.amax(0) if dense_abs.numel() else torch.zeros(len(selection.neurons))
    rows = []
    for k, neuron in enumerate(selection.neurons):
        rows.append({
            "layer": neuron.layer,
            "index": neuron.index,
            "scale": float(scales[k]),
            "dense": _compact(dense.activations[:, k]),
            "variants": {vid: _compact(obs.activations[:, k]) for vid, obs in variants.items()},
        })
    return {"tokens": tokens, "offsets": [list(span) for span in offsets], "neurons": rows}


def _compact(values: torch.Tensor) -> list[float]:
    """Floats with 6 significant digits: enough to draw, a third of the JSON size."""
    return [float(f"{v:.6g}") for v in values.tolist()]
