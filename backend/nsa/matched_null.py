"""Matched null for a selected neuron set: random sets from the same layers and activation levels.

Neurons chosen for an extreme score regress toward the mean under any perturbation, and how
much they regress depends on how strongly they fire. A fair "what would a random set show"
must therefore draw neurons that are alike in the two things that drive it: the layer (same
count per layer as the selection) and the dense activation level (the neuron's total |a| on
the text(s), cut into quantile bins within its layer). ``matched_null_sets`` draws many such
sets at once as one index tensor, so a single capture pass that keeps the union of the drawn
neurons (or every neuron's per-layer sums) serves all draws.
"""

from __future__ import annotations

import torch

from backend.errors import UserError
from backend.nsa.options import DEFAULT_NULL_DRAWS

DEFAULT_LEVEL_BINS = 8


def level_bins(levels: torch.Tensor, bins: int = DEFAULT_LEVEL_BINS) -> torch.Tensor:
    """``[layers, neurons]`` float levels -> ``[layers, neurons]`` long bin ids in ``0..bins-1``.

    Quantile bins per layer: bin b holds the neurons whose level rank within their layer is in
    ``[b/bins, (b+1)/bins)``. Ranks (ties broken by index) make every bin the same size
    (±1), whatever the distribution of levels.
    """
    if levels.dim() != 2:
        raise ValueError("levels must be [layers, neurons]")
    count = levels.shape[1]
    bins = max(1, min(bins, count))
    ranks = torch.empty_like(levels, dtype=torch.long)
    order = torch.sort(levels, dim=1, stable=True).indices  # [layers, neurons]
    ranks.scatter_(1, order, torch.arange(count).expand_as(order).contiguous())
    return ranks * bins // count


def matched_null_sets(
    levels: torch.Tensor,
    selected: torch.Tensor,
    *,
    draws: int = DEFAULT_NULL_DRAWS,
    bins: int = DEFAULT_LEVEL_BINS,
    seed: int = 0,
) -> torch.Tensor:
    """Random neuron sets matched to ``selected`` in layer and dense activation level.

    Signature: ``matched_null_sets(levels [layers, neurons] float, selected [k] long,
    *, draws=200, bins=8, seed=0) -> [draws, k] long``.

    - ``levels[l, j]``: neuron j of layer l's dense activation level, e.g. its total |a| over
      the text(s) the selection was made on.
    - ``selected``: flat neuron ids ``layer * neurons + index`` of the selected set (distinct).
    - Returns flat ids in the same encoding. Column c of every draw is a neuron from the same
      layer and the same level bin (``level_bins``) as ``selected[c]``; no draw repeats a
      neuron, and no draw contains a selected neuron. So every draw has exactly the selection's
      layer histogram and (layer, bin) histogram.
    - Same arguments and seed -> the same tensor (a private ``torch.Generator``; global RNG
      state is neither read nor changed).

    Raises ``UserError`` when a (layer, bin) cell has fewer unselected neurons than the
    selection takes from it (use fewer bins).
    """
    if draws < 1:
        raise UserError("the matched null needs at least one draw")
    layer_count, neuron_count = levels.shape
    selected = selected.reshape(-1).long().cpu()
    if selected.unique().numel() != selected.numel():
        raise ValueError("selected neurons must be distinct")
    if selected.numel() and not 0 <= int(selected.min()) <= int(selected.max()) < layer_count * neuron_count:
        raise ValueError("selected neuron id out of range")
    cell_of = (torch.arange(layer_count)[:, None] * bins + level_bins(levels.cpu(), bins)).reshape(-1)
    taken = torch.zeros(layer_count * neuron_count, dtype=torch.bool)
    taken[selected] = True
    generator = torch.Generator().manual_seed(seed)
    result = torch.empty((draws, selected.numel()), dtype=torch.long)
    selected_cells = cell_of[selected]
    for cell in torch.unique(selected_cells).tolist():  # ascending: a fixed order for the generator
        columns = (selected_cells == cell).nonzero().reshape(-1)  # [m] positions in the selection
        pool = ((cell_of == cell) & ~taken).nonzero().reshape(-1)  # [P] candidate flat ids
        if pool.numel() < columns.numel():
            layer, level_bin = divmod(cell, bins)
            raise UserError(f"matched null: layer {layer}, level bin {level_bin} has {pool.numel()} unselected "
                            f"neurons for {columns.numel()} selected ones; use fewer bins")
        # m distinct picks per draw: the first m of a random permutation of the pool.
        picks = torch.rand((draws, pool.numel()), generator=generator).argsort(dim=1)[:, : columns.numel()]
        result[:, columns] = pool[picks]
    return result


def split_flat(flat: torch.Tensor, neurons_per_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ids (any shape) -> ``(layers, indices)`` of the same shape."""
    return torch.div(flat, neurons_per_layer, rounding_mode="floor"), flat % neurons_per_layer


def percentile_and_p_value(observed: float, null: torch.Tensor) -> tuple[float, float]:
    """Where ``observed`` sits in the ``[draws]`` null: (percentile 0..100, one-sided p-value).

    percentile: share of null draws strictly below ``observed`` (+ half the ties), in percent.
    p: ``(1 + #{null >= observed}) / (1 + draws)``, the empirical p-value of a Monte-Carlo test
    for "larger than chance" (never 0: the observed set counts as one of the draws).
    """
    null = null.reshape(-1).double()
    below = float((null < observed).sum()) + 0.5 * float((null == observed).sum())
    at_least = int((null >= observed).sum())
    return 100.0 * below / null.numel(), (1 + at_least) / (1 + null.numel())
