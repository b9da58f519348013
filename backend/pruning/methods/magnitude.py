"""Magnitude pruning: remove the weights of smallest absolute value (the data-free baseline).

Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (NeurIPS 2015);
the LLM pruning papers (SparseGPT, Wanda, RIA) use it as their baseline, with one threshold per
layer matrix.
"""

from __future__ import annotations

import torch

from backend.pruning.protection import WeightGuard, guarded_mask_for_spec
from backend.pruning.registry import NoOptions, PruningMethod, each_weight
from backend.pruning.spec import SparsitySpec, require_weight_spec


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, spec: SparsitySpec, guard: WeightGuard | None = None) -> torch.Tensor:
    """Mask (True = pruned) of the smallest |w|.  weight: [out, in] -> mask [out, in]

    Unstructured: one threshold over the whole matrix, exactly ``round(ratio * numel)`` pruned.
    N:M: in each group of m consecutive inputs of a row, the m - n smallest are pruned.
    ``guard``: protected weights (backend.pruning.protection), same counts.
    """
    require_weight_spec(spec, "magnitude pruning")
    return guarded_mask_for_spec(weight.detach().float().abs(), spec, guard, per_row=False)


METHOD: PruningMethod[NoOptions] = PruningMethod(
    name="magnitude",
    description="|W|, one threshold per linear layer (baseline)",
    prune=each_weight(lambda weight, _stats, _options, spec, guard: magnitude_mask(weight, spec, guard)),
    needs=None,
    protects=True,
)
