"""RIA (Relative Importance and Activations), with optional channel permutation for N:M sparsity.

Zhang, Bai, Lin, Zhao, Hou, Cannistraci, "Plug-and-Play: An Efficient Post-training Pruning Method
for Large Language Models" (ICLR 2024). Score, for W: [out, in] and input norms ||X_j||_2:

    RIA_ij = (|W_ij| / sum_i |W_ij|  +  |W_ij| / sum_j |W_ij|) * ||X_j||_2 ** alpha

i.e. a weight's share of its input channel's total plus its share of its output row's total,
scaled by the activation norm (alpha = 0.5 in the paper). No weight update.

Unstructured sparsity compares the score over the whole matrix, as the paper and its code do by
default (``per_output=True`` gives Wanda's per-row comparison, the code's ``--per_outneuron``).
N:M compares within each group of m consecutive inputs.

Channel permutation (N:M only): the N:M groups are formed after reordering the input channels,
since which channels share a group decides what can be kept. RIA's heuristic channel reallocation
sorts channels by their summed score and deals them out so that each group gets one channel from
each importance band (a snake order); then, optionally, each slot of the groups is re-assigned by a
linear sum assignment that maximises the total kept score with the other slots fixed (it can only
improve: keeping the current assignment is one of the options).
"""

from __future__ import annotations

import torch
from pydantic import Field

from backend.errors import UserError
from backend.pruning.protection import WeightGuard, active, guarded_mask_for_spec
from backend.pruning.registry import LayerToPrune, MethodOptions, Pruned, PruningMethod
from backend.pruning.spec import (
    SparsitySpec,
    require_divisible,
    require_weight_spec,
)


def ria_metric(weight: torch.Tensor, act_norm: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """The RIA score in float32.  weight: [out, in], act_norm: [in] -> [out, in]"""
    if weight.dim() != 2 or act_norm.shape != (weight.shape[1],):
        raise ValueError(
            "weight must be [out, in] and act_norm [in]; "
            f"got {tuple(weight.shape)} and {tuple(act_norm.shape)}"
        )
    magnitude = weight.detach().float().abs()  # [out, in]
    tiny = torch.finfo(torch.float32).tiny  # an all-zero channel or row gets 0, not 0/0
    channel_total = magnitude.sum(dim=0, keepdim=True).clamp_min(
        tiny
    )  # [1, in]: sum over outputs i
    row_total = magnitude.sum(dim=1, keepdim=True).clamp_min(tiny)  # [out, 1]: sum over inputs j
    relative_importance = magnitude / channel_total + magnitude / row_total
    activation = act_norm.to(device=weight.device, dtype=torch.float32).pow(alpha)  # [in]
    return relative_importance * activation.unsqueeze(0)


@torch.no_grad()
def ria_mask(
    weight: torch.Tensor,
    act_norm: torch.Tensor,
    spec: SparsitySpec,
    alpha: float = 0.5,
    channel_permutation: bool = False,
    *,
    per_output: bool = False,
    lsa_refinement: bool = True,
    lsa_block_groups: int = 512,
    guard: WeightGuard | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RIA mask (True = pruned) and, with channel permutation, the input permutation used.

    weight: [out, in], act_norm: [in] -> (mask [out, in] in the original channel order,
    permutation [in] LongTensor of input indices such that ``mask[:, permutation]`` is a valid
    N:M mask, or None without channel permutation).

    Unstructured: exactly ``round(ratio * numel)`` pruned over the matrix (or ``int(in * ratio)``
    per row with ``per_output``). ``lsa_block_groups`` bounds each assignment problem to that many
    N:M groups (RIA's "fast" mode), keeping its cubic cost small on wide layers. ``guard``:
    protected weights (backend.pruning.protection); with channel permutation the permutation is
    chosen as without protection and the guard applies within the permuted groups.
    """
    require_weight_spec(spec, "RIA")
    metric = ria_metric(weight, act_norm, alpha)
    if not channel_permutation:
        return guarded_mask_for_spec(metric, spec, guard, per_row=per_output), None
    if spec.kind != "nm":
        raise UserError("RIA channel permutation only applies to N:M sparsity (e.g. 2:4)")
    require_divisible(metric.shape[1], spec.m)
    permutation = heuristic_channel_reallocation(metric, spec.m)
    if lsa_refinement:
        permutation = refine_permutation_by_assignment(
            metric, permutation, spec.n, spec.m, lsa_block_groups
        )
    mask = torch.empty_like(metric, dtype=torch.bool)
    permuted_guard = (WeightGuard(guard.protected[:, permutation], guard.mode, guard.factor)
                      if guard is not None and active(guard) else None)
    mask[:, permutation] = guarded_mask_for_spec(metric[:, permutation], spec, permuted_guard, per_row=False)
    return mask, permutation


def heuristic_channel_reallocation(metric: torch.Tensor, m: int) -> torch.Tensor:
    """RIA's channel reallocation.  metric: [out, in] -> permutation [in] (input indices)

    Channels sorted by summed score (ascending) are cut into m bands; slot s of group g takes the
    g-th channel of band s, with every other band reversed so the group totals stay balanced.
    """
    columns = metric.shape[1]
    require_divisible(columns, m)
    groups = columns // m
    by_importance = torch.sort(metric.sum(dim=0), stable=True).indices  # [in]
    bands = by_importance.view(m, groups).clone()  # [m, groups]: band s = slot s of every group
    bands[1::2] = bands[1::2].flip(1)
    return bands.T.reshape(-1)  # position g*m + s holds bands[s, g]


def nm_kept_score(metric: torch.Tensor, permutation: torch.Tensor | None, n: int, m: int) -> float:
    """Total score that an N:M mask keeps after permuting the input channels (the objective)."""
    permuted = metric if permutation is None else metric[:, permutation]
    rows, columns = permuted.shape
    top = permuted.reshape(rows, columns // m, m).topk(n, dim=2).values
    return float(top.sum(dtype=torch.float64))


def refine_permutation_by_assignment(
    metric: torch.Tensor, permutation: torch.Tensor, n: int, m: int, block_groups: int = 512
) -> torch.Tensor:
    """Improve a channel permutation slot by slot with a linear sum assignment.

    metric: [out, in], permutation: [in] -> a permutation [in] whose N:M kept score is at least
    the input's. For slot s and a block of groups, the channels now in slot s are re-assigned to
    the groups; score(c, g) = kept score of group g with channel c in slot s. With the other
    m - 1 entries of a row of group g fixed, the n kept ones are the top n - 1 of them plus the
    larger of (candidate, their n-th largest), so the score needs one L1-distance matrix:
    sum_r max(a_r, b_r) = (sum a + sum b + sum |a - b|) / 2.
    """
    from scipy.optimize import linear_sum_assignment  # heavy import, only when refining

    if block_groups < 1:
        raise ValueError("block_groups must be at least 1")
    permutation = permutation.clone()
    groups = metric.shape[1] // m
    for slot in range(m):
        others = [s for s in range(m) if s != slot]
        for first in range(0, groups, block_groups):
            last = min(first + block_groups, groups)
            block = permutation[first * m : last * m].view(
                last - first, m
            )  # [groups_b, m] channel ids
            candidates = metric[
                :, block[:, slot]
            ]  # [out, groups_b]: column c = channel in slot of group c
            rest = (
                metric[:, block[:, others]].sort(dim=2, descending=True).values
            )  # [out, groups_b, m-1]
            fixed_top = rest[:, :, : n - 1].sum(dim=(0, 2))  # [groups_b]
            nth = rest[:, :, n - 1]  # [out, groups_b]
            l1 = torch.cdist(candidates.T.unsqueeze(0), nth.T.unsqueeze(0), p=1).squeeze(
                0
            )  # [c, g]
            score = fixed_top.unsqueeze(0) + 0.5 * (
                candidates.sum(0).unsqueeze(1) + nth.sum(0).unsqueeze(0) + l1
            )
            chosen_rows, chosen_groups = linear_sum_assignment(
                score.double().cpu().numpy(), maximize=True
            )
            slot_channels = block[:, slot].clone()
            reassigned = torch.empty_like(slot_channels)
            reassigned[torch.as_tensor(chosen_groups, device=block.device)] = slot_channels[
                torch.as_tensor(chosen_rows, device=block.device)
            ]
            block[:, slot] = reassigned  # view: writes into permutation
    return permutation


class RiaOptions(MethodOptions):
    alpha: float = Field(default=0.5, ge=0, le=100, description="exponent a of ‖X_j‖₂ in the score")
    channel_permutation: bool = Field(
        default=False, description="N:M only: reallocate input channels before choosing the mask")


def _check_ria(options: RiaOptions, spec: SparsitySpec) -> None:
    if options.channel_permutation and spec.kind != "nm":
        raise UserError("channel permutation applies to RIA with an N:M pattern only")


def _prune_ria(layer: LayerToPrune, options: RiaOptions, spec: SparsitySpec) -> list[Pruned]:
    changes = []
    for name in layer.linears:
        mask, permutation = ria_mask(layer.weight(name), layer.statistics[name].act_norm, spec,
                                     alpha=options.alpha, channel_permutation=options.channel_permutation,
                                     guard=layer.guard_of(name))
        changes.append(Pruned(name, mask, info={"permuted": permutation is not None}))
    return changes


METHOD = PruningMethod(
    name="ria",
    description="relative importance × ‖X_j‖₂^a (Zhang et al. 2024)",
    prune=_prune_ria,
    options=RiaOptions,
    check=_check_ria,
    protects=True,
)
