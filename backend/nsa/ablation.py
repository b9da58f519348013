"""Causal check of NSA: does zeroing the selected neurons change the model's answer more than chance?

For each text the dense model's label log-prob margin (label vs the other label word, after
the task's probe) is measured intact, with the top NSA neurons zeroed, and with as many
random neurons zeroed, drawn from the same layers in the same numbers (excluding the
selected ones), over several draws. ``effect = margin_intact - margin_ablated``: positive
when the neurons supported the label. Zeroing is done on the down projection's input by
``neuron_hooks``, so the shared model's weights are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import Self

import torch

from backend.models.hooks import neuron_hooks
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import TaskSpec

DEFAULT_DRAWS = 5


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


def random_control_sets(
    selected: Mapping[int, Sequence[int]], neurons_per_layer: int, draws: int, seed: int = 0
) -> list[dict[int, list[int]]]:
    """``draws`` random neuron sets: per layer as many as selected there, none of the selected."""
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(draws):
        chosen = {}
        for layer, indices in sorted(selected.items()):
            excluded = torch.zeros(neurons_per_layer, dtype=torch.bool)
            excluded[list(indices)] = True
            pool = torch.nonzero(~excluded).flatten()
            picks = pool[torch.randperm(pool.numel(), generator=generator)[: len(indices)]]
            chosen[layer] = sorted(picks.tolist())
        sets.append(chosen)
    return sets


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@torch.inference_mode()
def ablation_check(
    loaded,
    texts: Sequence[str],
    selected: Mapping[int, Sequence[int]],
    task: TaskSpec,
    *,
    labels: Sequence[int | None] | None = None,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
) -> dict:
    """Per text and aggregated: the NSA neurons' effect on the label margin vs random neurons.

    ``labels[i]`` is the index of text i's gold label in ``task.label_words``; where it is
    None the dense model's own prediction is used (``label_source = "predicted"``).
    """
    labels = list(labels) if labels is not None else [None] * len(texts)
    neurons_per_layer = loaded.adapter.neuron_count(loaded.model)
    controls = random_control_sets(selected, neurons_per_layer, draws, seed)
    model = loaded.model
    # Batch row 0: intact; row 1: the NSA neurons zeroed; rows 2..: one random draw each.
    conditions: list[Mapping[int, Sequence[int]]] = [{}, dict(selected), *controls]
    rows = []
    for text, gold in zip(texts, labels, strict=True):
        probe = encode_probe(loaded.tokenizer, text, task, loaded.max_length)
        with NeuronAblation(model, loaded.adapter, conditions):
            log_probs = label_log_probs(model, probe, batch=len(conditions))  # [conditions, 2]
        label = gold if gold is not None else int(torch.argmax(log_probs[0]))
        margins = margin(log_probs, label).tolist()  # [conditions]
        intact_margin, ablated_margin = margins[0], margins[1]
        random_effects = [intact_margin - value for value in margins[2:]]
        mean, spread = _mean_std(random_effects)
        rows.append({
            "label": task.label_words[label].strip(),
            "label_source": "gold" if gold is not None else "predicted",
            "margin_intact": intact_margin,
            "margin_ablated": ablated_margin,
            "effect": intact_margin - ablated_margin,
            "random_effects": random_effects,
            "random_mean": mean,
            "random_std": spread,
        })

    effect_mean, _ = _mean_std([row["effect"] for row in rows])
    # One figure per draw (its mean over texts): the spread of what random neurons do.
    draw_means = [sum(row["random_effects"][d] for row in rows) / len(rows) for d in range(draws)]
    random_mean, random_std = _mean_std(draw_means)
    beats = sum(1 for row in rows if row["random_effects"] and row["effect"] > max(row["random_effects"]))
    z = None
    if random_std and effect_mean is not None and random_mean is not None:
        z = (effect_mean - random_mean) / random_std
    return {
        "neurons": sum(len(v) for v in selected.values()),
        "draws": draws,
        "seed": seed,
        "texts": rows,
        "aggregate": {
            "effect_mean": effect_mean,
            "random_effect_mean": random_mean,
            "random_effect_std": random_std,
            "z_score": z,
            "texts_beating_all_draws": beats,
        },
    }
