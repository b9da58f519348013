"""Magnitude pruning: remove the weights of smallest absolute value (the data-free baseline).

Han et al., "Learning both Weights and Connections for Efficient Neural Networks" (NeurIPS 2015);
the LLM pruning papers (SparseGPT, Wanda, RIA) use it as their baseline, with one threshold per
layer matrix.
"""

from __future__ import annotations

import torch

from backend.pruning.registry import NoOptions, PruningMethod, each_weight
from backend.pruning.spec import SparsitySpec, mask_for_spec, require_weight_spec


@torch.no_grad()
def magnitude_mask(weight: torch.Tensor, spec: SparsitySpec) -> torch.Tensor:
    """Mask (True = pruned) of the smallest |w|.  weight: [out, in] -> mask [out, in]

    Unstructured: one threshold over the whole matrix, exactly ``round(ratio * numel)`` pruned.
    N:M: in each group of m consecutive inputs of a row, the m - n smallest are pruned.
    """
    require_weight_spec(spec, "magnitude pruning")
    return mask_for_spec(weight.detach().float().abs(), spec, per_row=False)


METHOD: PruningMethod[NoOptions] = PruningMethod(
    name="magnitude",
    description="|W|, one threshold per linear layer (baseline)",
    prune=each_weight(lambda weight, _stats, _options, spec: magnitude_mask(weight, spec)),
    needs=None,
)
