"""The matched-null sampler: layer and level-bin histograms match exactly, seeded, no selected neuron drawn."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from backend.errors import UserError
from backend.nsa.matched_null import (
    level_bins,
    matched_null_sets,
    percentile_and_p_value,
    split_flat,
)

LAYERS, NEURONS = 4, 64


def _levels(seed: int = 0) -> torch.Tensor:
    # Heavy-tailed like real |a| totals: a few massive neurons per layer.
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((LAYERS, NEURONS), generator=generator).pow(4) * 100  # [layers, neurons]


def _selected() -> torch.Tensor:
    # Uneven layer counts, several neurons sharing a bin, one at the very top level of its layer.
    levels = _levels()
    top_of_layer_2 = 2 * NEURONS + int(levels[2].argmax())
    return torch.tensor([0 * NEURONS + 3, 0 * NEURONS + 40, 0 * NEURONS + 41, 1 * NEURONS + 7,
                         top_of_layer_2, 3 * NEURONS + 0, 3 * NEURONS + 63])


def test_level_bins_are_quantile_bins_per_layer():
    levels = _levels()
    ids = level_bins(levels, 8)
    assert ids.shape == levels.shape
    for layer in range(LAYERS):
        assert Counter(ids[layer].tolist()) == {b: NEURONS // 8 for b in range(8)}
        # Bins are ordered by level: every neuron of bin b is below every neuron of bin b+1.
        for b in range(7):
            assert levels[layer][ids[layer] == b].max() < levels[layer][ids[layer] == b + 1].min()


def test_draws_match_layer_and_level_histograms_exactly():
    levels, selected = _levels(), _selected()
    draws = matched_null_sets(levels, selected, draws=300, bins=8, seed=1)
    assert draws.shape == (300, selected.numel()) and draws.dtype == torch.long
    bins = level_bins(levels, 8).reshape(-1)
    layer_of = lambda flat: split_flat(flat, NEURONS)[0]
    selected_cells = Counter(zip(layer_of(selected).tolist(), bins[selected].tolist(), strict=True))
    selected_set = set(selected.tolist())
    for row in draws:
        # Column by column: same layer and same level bin as the selected neuron it stands for.
        assert torch.equal(layer_of(row), layer_of(selected))
        assert torch.equal(bins[row], bins[selected])
        assert Counter(zip(layer_of(row).tolist(), bins[row].tolist(), strict=True)) == selected_cells
        assert len(set(row.tolist())) == row.numel()  # no neuron twice in a draw
        assert not selected_set & set(row.tolist())  # never a selected neuron


def test_draws_vary_and_cover_the_pool():
    levels, selected = _levels(), _selected()
    draws = matched_null_sets(levels, selected, draws=400, bins=8, seed=3)
    # Column 0's cell holds 8 neurons, one of them selected: all 7 others should appear.
    bins = level_bins(levels, 8).reshape(-1)
    cell = (torch.arange(LAYERS * NEURONS) // NEURONS == 0) & (bins == bins[selected[0]])
    expected = set(cell.nonzero().reshape(-1).tolist()) - set(selected.tolist())
    assert set(draws[:, 0].tolist()) == expected
    assert len({tuple(row.tolist()) for row in draws}) > 350


def test_same_seed_same_draws_and_global_rng_untouched():
    levels, selected = _levels(), _selected()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = matched_null_sets(levels, selected, draws=200, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(first, matched_null_sets(levels, selected, draws=200, seed=7))
    assert not torch.equal(first, matched_null_sets(levels, selected, draws=200, seed=8))


def test_too_many_selected_in_one_cell_is_a_user_error():
    levels = _levels()
    ids = level_bins(levels, 8)
    crowded = (ids[0] == 5).nonzero().reshape(-1)[:5]  # 5 of the cell's 8 neurons: only 3 left
    with pytest.raises(UserError, match="fewer bins"):
        matched_null_sets(levels, crowded, draws=10, bins=8)
    assert matched_null_sets(levels, crowded, draws=10, bins=2).shape == (10, 5)


def test_percentile_and_p_value_by_hand():
    null = torch.tensor([0.0, 1.0, 2.0, 3.0])
    assert percentile_and_p_value(2.5, null) == (75.0, 2 / 5)
    assert percentile_and_p_value(2.0, null) == (62.5, 3 / 5)
    assert percentile_and_p_value(10.0, null) == (100.0, 1 / 5)
