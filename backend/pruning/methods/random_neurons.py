"""random-neurons: remove uniformly random MLP neurons — what structured pruning costs by chance."""

from __future__ import annotations

import torch
from pydantic import Field

from backend.pruning.registry import MethodOptions
from backend.pruning.structured import MlpLayer, NeuronPruning, layer_seed, neuron_method


class RandomNeuronOptions(MethodOptions):
    draw_seed: int = Field(default=0, ge=0, le=2**31 - 1,
                           description="seed of the draw (each layer draws its own neurons from it)")


def select_random(layer: MlpLayer, options: RandomNeuronOptions, count: int) -> NeuronPruning:
    """``count`` neurons drawn uniformly without replacement (a seeded draw per layer); no compensation."""
    generator = torch.Generator().manual_seed(layer_seed(options.draw_seed, layer.index))
    return NeuronPruning(torch.randperm(layer.neurons, generator=generator)[:count])


METHOD = neuron_method("random-neurons", "remove uniformly random MLP neurons (structured baseline)",
                       select_random, RandomNeuronOptions, data=False)
