"""A toy structured method, the whole of it in one module: remove the MLP neurons of least E[h_j²]^power.

What tests/unit/test_structured_method_plugin.py registers with one line to show that a structured
method is one module (options + selection) and one registry line.
"""

from __future__ import annotations

import torch
from pydantic import Field

from backend.pruning.structured import MlpLayer, NeuronDataOptions, NeuronPruning, lowest


class QuietOptions(NeuronDataOptions):
    power: float = Field(default=1.0, gt=0, le=4, description="toy: the score is E[h_j²] to this power")


def quiet_scores(covariance: torch.Tensor, mean: torch.Tensor, power: float) -> torch.Tensor:
    """E[h_j²]^power from the neuron statistics.  covariance [n, n], mean [n] -> [n] float64"""
    return (torch.diagonal(covariance).double() + mean.double().pow(2)).pow(power)


def select_quiet(layer: MlpLayer, options: QuietOptions, count: int) -> NeuronPruning:
    covariance, mean = layer.calibrated()
    return NeuronPruning(lowest(quiet_scores(covariance, mean, options.power).cpu(), count))
