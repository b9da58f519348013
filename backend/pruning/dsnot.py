"""DSnoT: refine a pruning mask by prune-and-grow swaps within each output row, without training.

Zhang, Zhao, Lin, Yu, Ji, Chen, ... Ji, "Dynamic Sparse No Training: Training-Free Fine-tuning for
Sparse LLMs" (ICLR 2024). For output row i of a layer W (dense) pruned to W̃ (mask M, True = pruned),
the expected reconstruction error over the calibration inputs is

    r_i = Σ_j (W_ij − W̃_ij) · E[X_j]

and each step swaps one pruned weight back in (grow) for one kept weight out (prune), so the count
per row, and the N:M pattern, stay exactly as the base method left them:

- grow g: a pruned weight whose revival moves r_i toward 0 (sign(W_ig·E[X_g]) = sign(r_i)), the one
  with the largest |W_ig·E[X_g]| / Var(X_g) (the paper's variance-scaled regrowth criterion);
- prune p: a kept weight whose removal does not push r_i further (sign(W̃_ip·E[X_p]) ≠ sign(r_i)),
  the least important by Wanda's |W̃_ip|·‖X_p‖₂; with N:M, the least important kept weight of g's
  own group of m (any sign), as the paper does;
- a row stops when |r_i| ≤ threshold, when the swap would flip the sign of r_i (the paper's rules),
  or after ``iterations`` swaps.

Added to the paper (ours): a swap is taken only if it lowers the row's exact squared error on the
calibration inputs, ``(W_i − W̃_i) G (W_i − W̃_i)ᵀ`` with ``G = E[x xᵀ]`` (half the Hessian the
engine streams); otherwise the row stops. The paper's criterion sees only the mean and the
variances, so one of its swaps can raise the true error; with this check the layer's error on the
calibration inputs never increases over the base mask's. It costs the ``[in, in]`` second moments
per linear (as SparseGPT's Hessian does), collected when ``refine=dsnot``.

A method that also updates the kept weights (SparseGPT) is refined on its updated weights: a grown
weight comes back with its dense value, a pruned one goes to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.pruning.registry import LayerToPrune, Pruned
from backend.pruning.spec import SparsitySpec


@dataclass(frozen=True)
class Refined:
    weight: torch.Tensor  # [out, in] float64, W̃ after the swaps (0 where pruned)
    mask: torch.Tensor  # [out, in] bool, True = pruned; same count per row (per N:M group)
    swaps: int  # accepted swaps over all rows


@torch.no_grad()
def dsnot_refine(dense: torch.Tensor, current: torch.Tensor, mask: torch.Tensor, second_moment: torch.Tensor,
                 mean: torch.Tensor, act_norm: torch.Tensor, spec: SparsitySpec, *, iterations: int = 50,
                 threshold: float = 0.1) -> Refined:
    """Swaps per row as the module docstring says.

    dense, current, mask: [out, in] (``current`` is 0 where ``mask``); second_moment: [in, in]
    E[x xᵀ] over the calibration tokens; mean, act_norm: [in] (E[x] and ‖X‖₂).
    """
    W = dense.detach().double()  # [out, in]
    sparse = torch.where(mask, torch.zeros_like(W), current.detach().double())  # [out, in]
    mask = mask.clone()
    G = second_moment.detach().double().to(W.device)  # [in, in]
    mu = mean.detach().double().to(W.device)  # [in]
    norm = act_norm.detach().double().to(W.device)  # [in]
    variance = (torch.diagonal(G) - mu * mu).clamp_min(0)
    variance = variance.clamp_min(1e-12 * max(float(variance.mean()), 1e-30))  # [in]
    delta = W - sparse  # [out, in]
    error_mean = delta @ mu  # [out]: r_i
    error_direction = delta @ G  # [out, in]: G δ_i per row, for the exact error change
    contribution = W * mu  # [out, in]: W_ij E[X_j], what reviving j removes from r_i
    rows = torch.arange(W.shape[0], device=W.device)
    active = torch.ones(W.shape[0], dtype=torch.bool, device=W.device)
    swaps = 0
    for _ in range(iterations):
        active &= error_mean.abs() > threshold
        if not bool(active.any()):
            break
        sign = torch.sign(error_mean).unsqueeze(1)  # [out, 1]
        grow_score = torch.where(mask & (sign * contribution > 0), sign * contribution / variance,
                                 torch.full_like(W, -torch.inf))
        grow_best, grow = grow_score.max(dim=1)  # [out]
        importance = sparse.abs() * norm  # [out, in], Wanda's score of the kept weights
        if spec.kind == "nm":
            group = (grow // spec.m).unsqueeze(1) * spec.m + torch.arange(spec.m, device=W.device)  # [out, m]
            in_group = torch.gather(torch.where(mask, torch.inf, importance), 1, group)
            prune = torch.gather(group, 1, in_group.argmin(dim=1, keepdim=True)).squeeze(1)
            prune_ok = torch.isfinite(in_group.min(dim=1).values)
        else:
            candidates = ~mask & (sign * sparse * mu <= 0)
            prune_score = torch.where(candidates, importance, torch.full_like(W, torch.inf))
            prune_best, prune = prune_score.min(dim=1)
            prune_ok = torch.isfinite(prune_best)
        w_grow, w_prune = W[rows, grow], sparse[rows, prune]  # [out]
        new_mean = error_mean - w_grow * mu[grow] + w_prune * mu[prune]
        exact_change = (2 * (-w_grow * error_direction[rows, grow] + w_prune * error_direction[rows, prune])
                        + w_grow ** 2 * G[grow, grow] + w_prune ** 2 * G[prune, prune]
                        - 2 * w_grow * w_prune * G[grow, prune])
        accept = (active & torch.isfinite(grow_best) & prune_ok
                  & (torch.sign(new_mean) == torch.sign(error_mean)) & (exact_change < 0))
        active &= accept
        if not bool(accept.any()):
            break
        chosen = rows[accept]
        g, p = grow[accept], prune[accept]
        wg, wp = w_grow[accept], w_prune[accept]
        mask[chosen, g] = False
        mask[chosen, p] = True
        sparse[chosen, g] = wg
        sparse[chosen, p] = 0
        error_mean[chosen] = new_mean[accept]
        error_direction[chosen] += -wg.unsqueeze(1) * G[g] + wp.unsqueeze(1) * G[p]
        swaps += int(chosen.numel())
    return Refined(sparse, mask, swaps)


def refine_changes(layer: LayerToPrune, changes: list[Pruned], options, spec: SparsitySpec) -> list[Pruned]:
    """The method's weight changes of one layer, each mask refined by DSnoT (biases untouched)."""
    refined = []
    for change in changes:
        if change.param != "weight":
            refined.append(change)
            continue
        statistics = layer.statistics[change.linear]
        dense = layer.weight(change.linear)  # [out, in], not yet changed by the engine
        current = dense if change.new_value is None else change.new_value
        result = dsnot_refine(dense, current, change.mask, statistics.hessian / 2, statistics.mean,
                              statistics.act_norm, spec, iterations=options.dsnot_iterations,
                              threshold=options.dsnot_threshold)
        new_value = None if change.new_value is None else result.weight.to(change.new_value.dtype)
        refined.append(Pruned(change.linear, result.mask.to(change.mask.device), new_value=new_value,
                              info={**change.info, "dsnot_swaps": result.swaps}))
    return refined
