"""random-neurons: remove uniformly random MLP neurons — what structured pruning costs by chance."""

from __future__ import annotations

from pydantic import Field

from backend.pruning.registry import MethodOptions
from backend.pruning.structured import neuron_method


class RandomNeuronOptions(MethodOptions):
    draw_seed: int = Field(default=0, ge=0, le=2**31 - 1,
                      description="seed of the draw (each layer draws its own neurons from it)")


METHOD = neuron_method("random-neurons", "remove uniformly random MLP neurons (structured baseline)",
                       RandomNeuronOptions, data=False)
