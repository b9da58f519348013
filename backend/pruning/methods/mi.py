"""mi: remove MLP neurons redundant by mutual information (arXiv 2406.00030), compensated.

Selection: the paper's pairwise-MI threshold rule (mi_neurons.mi_threshold_removal, Gaussian
estimator) or the joint Gaussian MI of a neuron with all the others (``estimator="joint"``).
Added to the paper: the least-squares fold-in of the removed neurons (on by default), the choice
of which member of a redundant pair goes (``victim``, the paper leaves it open) and, as an option,
``weigh_output``: rank the neurons by the part of their output the kept ones cannot reproduce.
docs/pruning-methods.md says what the paper specifies and what we added.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from backend.pruning import neuron_math
from backend.pruning.methods.mi_neurons import (
    mi_threshold_removal,
    output_energy,
    unexplained_output_removal,
)
from backend.pruning.structured import (
    CompensationOptions,
    MlpLayer,
    NeuronPruning,
    layer_seed,
    neuron_method,
    validated_compensation,
)


class MiOptions(CompensationOptions):
    estimator: Literal["pairwise", "joint"] = Field(
        default="pairwise", description="pairwise: the paper's threshold rule on pairwise Gaussian MI; "
                                        "joint: -½log(1-R²_j) of a neuron with all kept ones")
    threshold: float | None = Field(default=None, gt=0, le=100,
                                    description="pairwise: starting threshold Tr in nats "
                                                "(default: the largest pairwise MI)")
    pair_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="pairwise: order of the pair visits")
    block: int | None = Field(default=None, ge=1, le=65536,
                              description="joint: neurons removed per C⁻¹ update (default n/128)")
    victim: Literal["less-output", "more-redundant"] = Field(
        default="less-output", description="pairwise rule: of a redundant pair remove the member with the "
                                           "smaller output E[h²]·‖W_down[:, j]‖² (less-output) or the larger "
                                           "total MI (more-redundant); the paper does not say")
    weigh_output: bool = Field(
        default=False, description="ours, not the paper's: remove the neurons of least (1 - R²)·E[h²]·"
                                   "‖W_down[:, j]‖², the output the kept ones cannot reproduce "
                                   "(pairwise: 1 - R² = exp(-2·max pairwise MI)); replaces the threshold rule")


def select_mi(layer: MlpLayer, options: MiOptions, count: int) -> NeuronPruning:
    """The redundant neurons by the chosen estimator, folded into the kept ones (least squares,
    ridge by validation over the calibration windows: structured.validated_compensation)."""
    covariance, mean = layer.calibrated()
    removed = _redundant(layer, covariance, mean, count, options)
    if not options.compensate:
        return NeuronPruning(removed)
    return validated_compensation(layer, removed, options)


def _redundant(layer: MlpLayer, covariance: torch.Tensor, mean: torch.Tensor, count: int,
               options: MiOptions) -> torch.Tensor:
    """covariance [n, n], mean [n] -> the ``count`` neurons to remove, LongTensor [count]."""
    down_weight = layer.down_weight  # [out, n]
    if options.estimator == "pairwise":
        if options.weigh_output:
            return unexplained_output_removal(covariance, mean, down_weight, count)
        return mi_threshold_removal(covariance, mean, count, threshold=options.threshold,
                                    seed=layer_seed(options.pair_seed, layer.index), victim=options.victim,
                                    output_energy=output_energy(covariance, mean, down_weight))
    second_moment = torch.diagonal(covariance).double() + mean.double().pow(2)  # [n] E[h²]
    order, _ = neuron_math.greedy_neuron_removal(
        down_weight, covariance, count, damp=options.damp,
        criterion="unexplained-output" if options.weigh_output else "information",
        block=neuron_math.removals_per_update(options.block, layer.neurons), second_moment=second_moment)
    return order


METHOD = neuron_method("mi", "remove MLP neurons redundant by mutual information (arXiv 2406.00030), "
                       "removed ones folded into the kept ones (structured)", select_mi, MiOptions)
