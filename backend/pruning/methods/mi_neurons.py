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

from collections.abc import Callable

import torch

from backend.pruning.spec import pruned_count

# Which member of a redundant pair the threshold rule removes (mi_threshold_removal).
VICTIM_RULES = ("less-output", "more-redundant")
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
    removed = _greedy_by_best_partner(
        information, count - constant_ids.numel(),
        lambda redundancy, kept: int(torch.argmax(torch.where(kept, redundancy, float("-inf")))))
    greedy_ids = live_ids[removed.to(live_ids.device)]
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


@torch.no_grad()
def mi_threshold_removal(
    covariance: torch.Tensor,
    mean: torch.Tensor,
    count: int,
    *,
    threshold: float | None = None,
    decay: float = 0.9,
    seed: int = 0,
    min_variance: float = 1e-8,
    victim: str = "less-output",
    output_energy: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's rule: visit random pairs of kept neurons; if I(k; l) > Tr, remove one of them.

    arXiv 2406.00030 draws random neuron pairs and prunes one neuron of each pair whose MI
    exceeds a threshold Tr until the compression rate is met. Made exact and finite here: every
    pair above Tr is visited once, in a seeded random order (a pair whose member is already gone
    is skipped); when the pass ends short of ``count``, Tr is multiplied by ``decay`` and only the
    newly admitted pairs are visited. ``threshold`` None starts at the largest pairwise MI.
    Constant neurons go first (as in ``mi_removal_order``); if every remaining pair has MI 0 the
    rest go by variance, lowest first.

    Which member of a redundant pair goes (``victim``) the paper does not say:
    "less-output" (default) removes the one whose output E[h_j²]·‖W_down[:, j]‖²
    (``output_energy`` [n]) is smaller; "more-redundant" the one with the larger total MI with
    the other live neurons. MI is symmetric and blind to scale, so "more-redundant" may remove the
    member carrying a huge output (an attention-sink neuron, docs/pitfalls.md), whose fold-in
    into its weakly correlated partner then multiplies the layer's error.

    covariance [n, n], mean [n] -> LongTensor [count], in removal order.
    """
    neurons = covariance.shape[0]
    if not 0 <= count < neurons:
        raise ValueError(f"can remove 0 to {neurons - 1} of {neurons} neurons, not {count}")
    if not 0.0 < decay < 1.0:
        raise ValueError(f"decay must be in (0, 1), got {decay}")
    if victim not in VICTIM_RULES:
        raise ValueError(f"unknown victim rule {victim!r}; choose from {', '.join(VICTIM_RULES)}")
    if victim == "less-output" and (output_energy is None or output_energy.shape != (neurons,)):
        raise ValueError("victim 'less-output' needs output_energy [n] (E[h_j²]·‖W_down[:, j]‖²)")
    covariance, mean = covariance.detach().float().cpu(), mean.detach().float().cpu()
    variance = torch.diagonal(covariance).detach().float().clamp_min(0)  # [n]
    constant = variance <= min_variance * float(variance.mean())
    constant_ids = torch.nonzero(constant).squeeze(1)
    constant_ids = constant_ids[torch.sort(mean.detach().float()[constant_ids].abs(), stable=True).indices]
    removed = constant_ids[:count].tolist()
    if len(removed) == count:
        return torch.tensor(removed, dtype=torch.long)

    live_ids = torch.nonzero(~constant).squeeze(1)
    information = gaussian_mutual_information(covariance[live_ids][:, live_ids]).cpu()  # [live, live]
    if victim == "less-output":
        assert output_energy is not None, "checked above"
        preference = (-output_energy.detach().double().cpu()[live_ids]).tolist()  # less output goes
    else:
        preference = information.sum(dim=1).tolist()  # the more redundant member goes
    first_of, second_of = torch.triu_indices(live_ids.numel(), live_ids.numel(), offset=1)
    values = information[first_of, second_of]  # [pairs], every unordered pair once
    values, by_value = torch.sort(values, descending=True, stable=True)
    first_of, second_of = first_of[by_value], second_of[by_value]
    kept = [True] * live_ids.numel()  # plain lists: the pair loop is Python
    live = live_ids.tolist()
    generator = torch.Generator().manual_seed(seed)
    level = float(values[0]) if threshold is None else float(threshold)
    positive = values[values > 0]
    smallest_positive = float(positive.min()) if positive.numel() else 0.0
    start = 0  # pairs before it (MI above the previous level) were visited in an earlier pass
    ascending = -values  # searchsorted needs ascending order
    while len(removed) < count:
        end = int(torch.searchsorted(ascending, -level, right=False))  # pairs with MI > level
        band = torch.arange(start, end)[torch.randperm(max(end - start, 0), generator=generator)]
        for first, second in zip(first_of[band].tolist(), second_of[band].tolist(), strict=True):
            if kept[first] and kept[second]:
                chosen = first if preference[first] >= preference[second] else second
                kept[chosen] = False
                removed.append(live[chosen])
                if len(removed) == count:
                    break
        start = max(start, end)
        if level <= 0.0:
            break
        level *= decay
        if level < smallest_positive:
            level = 0.0  # the last pass admits every remaining pair with MI > 0
    if len(removed) < count:  # independent leftovers: least variance first
        rest = live_ids[torch.tensor(kept)]
        rest = rest[torch.sort(variance[rest], stable=True).indices]
        removed.extend(rest[: count - len(removed)].tolist())
    return torch.tensor(removed, dtype=torch.long)


def output_energy(covariance: torch.Tensor, mean: torch.Tensor, down_weight: torch.Tensor) -> torch.Tensor:
    """E[h_j²]·‖W_down[:, j]‖²: the energy neuron j adds to the layer's output.  -> [n] float64.

    covariance [n, n], mean [n] of the neurons, down_weight [out, n].
    """
    second_moment = torch.diagonal(covariance).double().cpu() + mean.double().cpu().pow(2)
    return second_moment * down_weight.detach().double().cpu().pow(2).sum(dim=0)


@torch.no_grad()
def unexplained_output_removal(
    covariance: torch.Tensor, mean: torch.Tensor, down_weight: torch.Tensor, count: int
) -> torch.Tensor:
    """Greedy: remove the neuron whose output the kept neurons reproduce the worst, least first.

    Our addition to the paper (``weigh_output``): a neuron's score is
    exp(-2 max_k I(j; k)) · E[h_j²]·‖W_down[:, j]‖² = (1 - max_k ρ²_jk) · output energy, the
    maximum over kept neurons k: the part of its output that its best kept partner cannot carry
    (the exact residual of a linear fit under the Gaussian model). The MI ranks redundancy, the
    energy says what is lost if the redundancy is not enough. After a removal only the neurons
    whose best partner it was are rescored (their score can only grow).

    covariance [n, n], mean [n], down_weight [out, n] -> LongTensor [count], in removal order.
    """
    neurons = covariance.shape[0]
    if not 0 <= count < neurons:
        raise ValueError(f"can remove 0 to {neurons - 1} of {neurons} neurons, not {count}")
    energy = output_energy(covariance, mean, down_weight)  # [n]
    information = gaussian_mutual_information(covariance.detach().cpu()).double()  # [n, n]

    def least_unexplained(redundancy: torch.Tensor, kept: torch.Tensor) -> int:
        score = torch.exp(-2.0 * redundancy.clamp_min(0)) * energy
        return int(torch.argmin(torch.where(kept, score, float("inf"))))

    return _greedy_by_best_partner(information, count, least_unexplained)


def _greedy_by_best_partner(information: torch.Tensor, count: int,
                            pick: Callable[[torch.Tensor, torch.Tensor], int]) -> torch.Tensor:
    """Remove ``count`` neurons one at a time; ``pick(redundancy [n], kept [n] bool)`` names the next.

    ``redundancy`` is each neuron's largest pairwise MI with a kept neuron (``information``
    [n, n], overwritten). After a removal only the neurons whose best partner it was are
    rescored: everyone else's best partner is still kept. -> LongTensor [count], removal order.
    """
    information.fill_diagonal_(float("-inf"))  # a neuron is not redundant with itself
    redundancy, partner = information.max(dim=1)  # [n]
    kept = torch.ones(information.shape[0], dtype=torch.bool, device=information.device)
    removed = []
    for _ in range(count):
        candidate = pick(redundancy, kept)
        removed.append(candidate)
        kept[candidate] = False
        information[:, candidate] = float("-inf")
        affected = kept & (partner == candidate)
        if bool(affected.any()):
            redundancy[affected], partner[affected] = information[affected].max(dim=1)
    return torch.tensor(removed, dtype=torch.long)
