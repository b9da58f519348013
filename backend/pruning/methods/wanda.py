"""Wanda: prune by weight magnitude times input activation norm, compared within each output row.

Sun, Liu, Bair, Kolter, "A Simple and Effective Pruning Approach for Large Language Models"
(ICLR 2024). Score S_ij = |W_ij| * ||X_j||_2, where ||X_j||_2 is the norm of input feature j
over all calibration tokens; no weight update. Comparing within each output row (rather than the
whole matrix) is the paper's finding for LLMs and is what the reference code does.
"""

from __future__ import annotations

import torch

from backend.pruning.protection import WeightGuard, guarded_mask_for_spec
from backend.pruning.registry import NoOptions, PruningMethod, each_weight
from backend.pruning.spec import SparsitySpec, require_weight_spec
from backend.pruning.stats import InputStatistics


def wanda_metric(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||_2 in float32.  weight: [out, in], act_norm: [in] -> [out, in]"""
    _check_act_norm(weight, act_norm)
    # abs() of a float32 weight is a new tensor already: scaled in place, one allocation, not two
    return weight.detach().float().abs().mul_(
        act_norm.to(device=weight.device, dtype=torch.float32).unsqueeze(0)
    )


@torch.no_grad()
def wanda_mask(weight: torch.Tensor, act_norm: torch.Tensor, spec: SparsitySpec,
               guard: WeightGuard | None = None) -> torch.Tensor:
    """Mask (True = pruned).  weight: [out, in], act_norm: [in] -> mask [out, in]

    Unstructured: exactly ``int(in * ratio)`` lowest-scoring weights of every output row.
    N:M: the m - n lowest of each group of m consecutive inputs of a row.
    ``guard``: protected weights; a fully protected row's quota moves to the other rows
    (backend.pruning.protection), so the matrix total stays out * int(in * ratio).
    """
    require_weight_spec(spec, "Wanda")
    return guarded_mask_for_spec(wanda_metric(weight, act_norm), spec, guard, per_row=True)


def _check_act_norm(weight: torch.Tensor, act_norm: torch.Tensor) -> None:
    if weight.dim() != 2 or act_norm.shape != (weight.shape[1],):
        raise ValueError(
            "weight must be [out, in] and act_norm [in]; "
            f"got {tuple(weight.shape)} and {tuple(act_norm.shape)}"
        )


def _wanda_linear_mask(weight: torch.Tensor, stats: InputStatistics | None, _options: NoOptions,
                       spec: SparsitySpec, guard: WeightGuard | None) -> torch.Tensor:
    """The registry's per-linear call: weight [out, in] -> mask [out, in]."""
    assert stats is not None, "the engine collects every linear's input statistics (needs='all')"
    return wanda_mask(weight, stats.act_norm, spec, guard)


METHOD = PruningMethod(
    name="wanda",
    description="|W_ij|·‖X_j‖₂, compared within each output row (Sun et al. 2023)",
    prune=each_weight(_wanda_linear_mask),
    protects=True,
)
