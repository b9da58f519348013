"""flap: remove MLP neurons of least fluctuation Var(h_j)·‖W_down[:, j]‖² (An et al., AAAI 2024).

Compensation: the removed neurons' mean output W_R μ_R goes into the down projection's bias where
it has one (OPT, GPT-2); LLaMA's down_proj has no bias, so there FLAP is its score alone.
"""

from __future__ import annotations

import torch
from pydantic import Field

from backend.pruning import neuron_math
from backend.pruning.structured import (
    MlpLayer,
    NeuronDataOptions,
    NeuronPruning,
    ascending,
    lowest,
    neuron_method,
)


class FlapOptions(NeuronDataOptions):
    compensate: bool = Field(default=True,
                             description="add the removed neurons' mean output to the down bias")


def select_flap(layer: MlpLayer, options: FlapOptions, count: int) -> NeuronPruning:
    """The neurons of least Var(h_j)·‖W_j‖²; their mean output W_R μ_R into the down bias."""
    covariance, mean = layer.calibrated()
    removed = ascending(lowest(neuron_math.flap_scores(torch.diagonal(covariance), layer.down_weight).cpu(),
                               count))
    if not options.compensate:
        return NeuronPruning(removed)
    if layer.down_bias is None:  # nothing to carry the mean: FLAP reduces to its score here
        return NeuronPruning(removed, info={"compensated": False, "reason": "no down bias"})
    bias = layer.down_bias + neuron_math.mean_bias(layer.down_weight, mean, removed.to(mean.device))
    return NeuronPruning(removed, None, bias)


METHOD = neuron_method("flap", "remove MLP neurons of least Var(h_j)·‖W_j‖², mean into the bias "
                       "(An et al. 2024; structured)", select_flap, FlapOptions)
