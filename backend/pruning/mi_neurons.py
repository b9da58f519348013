"""Structured pruning of MLP neurons that are redundant by mutual information with the kept ones.

A neuron (see docs/architecture.md: an input channel of the MLP down projection) can go when
another kept neuron already carries what it carries. The estimator has to work from streamed
second-order statistics: a 7B layer has 11008 neurons and ~260k calibration tokens, so no
[tokens, neurons] matrix is kept, only the covariance [neurons, neurons] and the mean.

Estimator: the Gaussian mutual information of each pair, from the correlation matrix,

    I(i; j) = -1/2 log(1 - rho_ij^2)   (nats),

which is the exact MI when the pair is jointly Gaussian and measures linear dependence otherwise
(SwiGLU neurons are signed and heavy-tailed: a nonlinear dependence with rho ~ 0 is not seen).
Why pairwise rather than the MI of a neuron with all kept neurons jointly (-1/2 log(1 - R_i^2)
from the inverse correlation): the joint form needs an inverse of the [neurons, neurons]
correlation, which is singular exactly in the cases that matter (duplicated or dead neurons, or
fewer calibration tokens than neurons) and then depends on the ridge chosen; the pairwise form
needs no inverse, is O(neurons^2) memory, and its answer can be shown ("neuron 3 duplicates
neuron 1, I = 4.2 nats").

Removal is greedy: the redundancy of a kept neuron is its largest MI with any other kept neuron;
remove the most redundant one, then update only the neurons whose closest partner it was, and
repeat. A duplicated pair therefore loses one member, and the other stops being redundant.
Constant neurons (variance <= min_variance x the layer's mean variance; dead ones first, i.e. by
|mean| ascending) carry no information and are removed before any other.
"""

from __future__ import annotations

import torch

from backend.pruning.registry import InputNeeds, LayerToPrune, Pruned, PruningMethod, neuron_removal
from backend.pruning.spec import SparsitySpec, pruned_count

# rho^2 is clipped below 1 so that exact duplicates get a large finite MI (about 8.4 nats).
_MAX_SQUARED_CORRELATION = 1.0 - 1e-7


def gaussian_mutual_information(covariance: torch.Tensor) -> torch.Tensor:
    """Pairwise Gaussian MI in nats from a covariance.  [n, n] -> [n, n], diagonal 0.

    Neurons with zero variance have MI 0 with everything (their correlation is undefined).
    """
    cov = covariance.detach().to(torch.float32)
    std = torch.diagonal(cov).clamp_min(0).sqrt()  # [n]
    denominator = std.unsqueeze(1) * std.unsqueeze(0)
    correlation = torch.where(
        denominator > 0, cov / denominator.clamp_min(torch.finfo(torch.float32).tiny), 0.0
    )
    squared = correlation.pow(2).clamp(0.0, _MAX_SQUARED_CORRELATION)
    information = -0.5 * torch.log1p(-squared)
    information.fill_diagonal_(0.0)
    return information


@torch.no_grad()
def mi_removal_order(
    covariance: torch.Tensor, mean: torch.Tensor, count: int, *, min_variance: float = 1e-8
) -> torch.Tensor:
    """The first ``count`` neurons in the order the greedy removes them.

    covariance: [neurons, neurons], mean: [neurons] -> LongTensor [count] (removal order).
    """
    neurons = covariance.shape[0]
    if covariance.shape != (neurons, neurons) or mean.shape != (neurons,):
        raise ValueError(
            "covariance must be [n, n] and mean [n]; "
            f"got {tuple(covariance.shape)}, {tuple(mean.shape)}"
        )
    if not 0 <= count < neurons:
        raise ValueError(f"can remove 0 to {neurons - 1} of {neurons} neurons, not {count}")
    device = covariance.device
    variance = torch.diagonal(covariance).detach().float().clamp_min(0)  # [n]
    scale = float(variance.mean())
    constant = variance <= min_variance * scale  # all of them when every variance is 0
    constant_ids = torch.nonzero(constant).squeeze(1)
    # Among constant neurons, dead ones (mean 0) go first: zeroing them changes nothing at all.
    constant_ids = constant_ids[
        torch.sort(mean.detach().float()[constant_ids].abs(), stable=True).indices
    ]
    if count <= constant_ids.numel():
        return constant_ids[:count].to(torch.long)

    live_ids = torch.nonzero(~constant).squeeze(1)  # [live]
    information = gaussian_mutual_information(covariance[live_ids][:, live_ids])  # [live, live]
    information.fill_diagonal_(float("-inf"))  # a neuron is not redundant with itself
    redundancy, partner = information.max(dim=1)  # [live]: largest MI with another kept neuron
    kept = torch.ones(live_ids.numel(), dtype=torch.bool, device=device)
    removed = []
    for _ in range(count - constant_ids.numel()):
        candidate = torch.argmax(torch.where(kept, redundancy, float("-inf")))
        removed.append(candidate)
        kept[candidate] = False
        information[:, candidate] = float("-inf")
        affected = kept & (partner == candidate)
        if bool(affected.any()):
            redundancy[affected], partner[affected] = information[affected].max(dim=1)
    greedy_ids = live_ids[torch.stack(removed)]
    return torch.cat([constant_ids, greedy_ids]).to(torch.long)


def mi_neurons_to_remove(
    covariance: torch.Tensor, mean: torch.Tensor, ratio: float, *, min_variance: float = 1e-8
) -> torch.Tensor:
    """Neurons to remove, sorted: exactly ``round(ratio * neurons)`` of them.

    covariance: [neurons, neurons] and mean: [neurons] of the down projection's input (from
    InputStatistics(covariance=True)) -> LongTensor [removed], ascending neuron indices.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"neuron ratio must be in [0, 1), got {ratio}")
    count = pruned_count(covariance.shape[0], ratio)
    return torch.sort(mi_removal_order(covariance, mean, count, min_variance=min_variance)).values


def _prune_mi(layer: LayerToPrune, _options, spec: SparsitySpec) -> list[Pruned]:
    stats = layer.statistics[layer.adapter.mlp_output]
    return neuron_removal(layer, mi_neurons_to_remove(stats.covariance, stats.mean, spec.ratio))


METHOD = PruningMethod(
    name="mi",
    description="remove MLP neurons redundant by mutual information (structured)",
    prune=_prune_mi,
    needs=InputNeeds(linears="mlp_output", covariance=True),
    structured=True,
)
