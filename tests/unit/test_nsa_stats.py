"""NSA statistics where the truth is known: pure noise, a planted pruning effect, interval coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.nsa.compare import TextObservation, compare_text
from backend.nsa.scoring import LayerMass, layer_sums, select_neurons
from backend.nsa.stats import (
    NOT_DISTINGUISHABLE,
    StatsOptions,
    flat_ids,
    fold_split,
    interval,
    make_plan,
    set_figures,
    specificity,
    variant_statistics,
)
from backend.nsa.sums import StateSums

TEXTS, TOKENS, LAYERS, NEURONS, TOP_K = 12, 30, 4, 128, 20
INFLUENTIAL_TOKENS = [3, 4, 10, 11, 20]
NOISE = 0.3  # log-sd of the token-level scatter
WORDS = [[3, 4], [10, 11], [20]]  # token indices of each word


def _masks():
    influential = torch.zeros(TOKENS, dtype=torch.bool)
    influential[INFLUENTIAL_TOKENS] = True
    scored = torch.ones(TOKENS, dtype=torch.bool)
    scored[0] = False  # the start token
    return influential, scored


def _sums(magnitude: torch.Tensor) -> StateSums:
    """``[tokens, layers, neurons]`` A -> StateSums, through the production per-layer reduction."""
    influential, scored = _masks()
    per_layer = {layer: layer_sums(magnitude[:, layer], influential, scored, WORDS) for layer in range(LAYERS)}
    return StateSums.from_layers(per_layer, LAYERS, NEURONS, len(WORDS))


def _world(seed: int, planted: torch.Tensor | None = None):
    """Dense and variant A for every text. Each neuron has a level mu_j; tokens scatter around it
    independently in the dense model and in the variant (a perturbation unrelated to the words).
    ``planted`` (flat ids): those neurons fire 3x on the influential tokens, and the variant
    halves exactly them there."""
    generator = torch.Generator().manual_seed(seed)
    mu = torch.exp(torch.randn((LAYERS, NEURONS), generator=generator))
    dense, variant = [], []
    for _ in range(TEXTS):
        d = mu * torch.exp(NOISE * torch.randn((TOKENS, LAYERS, NEURONS), generator=generator))
        v = mu * torch.exp(NOISE * torch.randn((TOKENS, LAYERS, NEURONS), generator=generator))
        if planted is not None:
            layers, index = planted // NEURONS, planted % NEURONS
            rows = torch.tensor(INFLUENTIAL_TOKENS)
            d[rows[:, None], layers, index] *= 3.0
            v[rows[:, None], layers, index] = 0.5 * d[rows[:, None], layers, index]
        dense.append(_sums(d))
        variant.append(_sums(v))
    return dense, variant


def _run(dense, variant, options: StatsOptions):
    scores = [state.scores() for state in dense]
    selection = select_neurons(scores, TOP_K)
    plan = make_plan(dense, scores, selection, TOP_K, options)
    words = [["good", "bad", "fine"]] * len(dense)
    return plan, variant_statistics(plan, dense, variant, words, options)


def test_pure_noise_in_sample_excess_is_positive_held_out_is_not_distinguishable():
    dense, variant = _world(seed=0)
    _, result = _run(dense, variant, StatsOptions(null_draws=200, resamples=1000, seed=0))
    in_sample, held_out = result["in_sample"], result["held_out"]
    # Selection on the same texts: regression to the mean looks like a pruning effect.
    assert in_sample["excess_drop"]["mean"] > 0.03
    assert in_sample["excess_drop"]["low"] > 0
    # Measured on the other fold: nothing there.
    assert held_out["excess_drop"]["low"] <= 0 <= held_out["excess_drop"]["high"]
    assert held_out["verdict"] == NOT_DISTINGUISHABLE
    assert abs(held_out["excess_drop"]["mean"]) < in_sample["excess_drop"]["mean"] / 3
    assert held_out["null"]["p_value"] > 0.01


def test_pure_noise_held_out_excess_is_centred_on_zero_across_worlds():
    in_means, held_means = [], []
    for seed in range(1, 9):
        dense, variant = _world(seed=seed)
        _, result = _run(dense, variant, StatsOptions(null_draws=0, resamples=0, seed=seed))
        in_means.append(result["in_sample"]["excess_drop"]["mean"])
        held_means.append(result["held_out"]["excess_drop"]["mean"])
    assert min(in_means) > 0.02
    assert abs(np.mean(held_means)) < 0.02 < np.mean(in_means) / 3


def test_planted_effect_is_found_held_out_with_small_p():
    generator = torch.Generator().manual_seed(11)
    planted = torch.cat([layer * NEURONS + torch.randperm(NEURONS, generator=generator)[:5] for layer in range(LAYERS)])
    dense, variant = _world(seed=3, planted=planted)
    plan, result = _run(dense, variant, StatsOptions(null_draws=200, resamples=1000, seed=0))
    # Planted neurons with a low level fall under the negligible-activation rule; the rest are found.
    assert len(set(plan.selected.tolist()) & set(planted.tolist())) >= 16
    held_out = result["held_out"]
    assert held_out["excess_drop"]["low"] > 0.3  # halved: ~0.5 minus the layers' small share
    assert held_out["verdict"] == "larger drop than the baseline"
    assert held_out["null"]["p_value"] < 0.01 and held_out["null"]["percentile"] == 100.0
    assert held_out["null"]["draws"] == 200


def test_bootstrap_interval_covers_a_known_mean():
    covered = 0
    for sim in range(200):
        sample = np.random.default_rng(1000 + sim).normal(1.5, 2.0, size=20)
        result = interval(sample.tolist(), StatsOptions(resamples=1000, seed=sim))
        covered += result["low"] <= 1.5 <= result["high"]
    assert covered >= 180  # >= 90% of 200 for a nominal 95% interval


def test_same_seed_same_numbers_other_seed_other_split():
    dense, variant = _world(seed=5)
    first = _run(dense, variant, StatsOptions(null_draws=50, resamples=200, seed=4))[1]
    again = _run(dense, variant, StatsOptions(null_draws=50, resamples=200, seed=4))[1]
    other = _run(dense, variant, StatsOptions(null_draws=50, resamples=200, seed=5))[1]
    assert first == again
    assert first["held_out"] != other["held_out"]
    assert fold_split(10, 3) == fold_split(10, 3) and fold_split(10, 3) != fold_split(10, 4)


def test_few_texts_or_no_split_say_why_there_is_no_held_out_figure():
    dense, variant = _world(seed=2)
    result = _run(dense[:3], variant[:3], StatsOptions(null_draws=20, resamples=100))[1]
    assert result["held_out"] is None and "at least 4 texts" in result["held_out_note"]
    assert result["in_sample"]["excess_drop"]["mean"] is not None
    result = _run(dense, variant, StatsOptions(split=False, null_draws=0, resamples=100))[1]
    assert result["held_out"] is None and "--no-split" in result["held_out_note"]
    assert result["in_sample"]["null"] is None


def test_set_figures_equal_compare_text_on_full_activations():
    # The sums-based figures must be the figures step 3 has always reported.
    generator = torch.Generator().manual_seed(0)
    dense_a = torch.randn((TOKENS, LAYERS, NEURONS), generator=generator)
    variant_a = dense_a * (torch.rand((TOKENS, LAYERS, NEURONS), generator=generator) > 0.3)
    dense, variant = _sums(dense_a.abs()), _sums(variant_a.abs())
    selection = select_neurons([dense.scores()], 6)
    ids = flat_ids(selection, NEURONS)
    influential, scored = _masks()

    def observation(a):
        columns = torch.stack([a[:, n.layer, n.index] for n in selection.neurons], 1)
        mass = {layer: LayerMass(a[:, layer].abs().sum(1),
                                 torch.stack([a[w, layer].abs().amax(0).sum() for w in WORDS]))
                for layer in range(LAYERS)}
        return TextObservation(columns, mass)

    expected = compare_text(observation(dense_a), observation(variant_a), selection, influential, scored, WORDS)
    figures = set_figures(dense, variant, ids[None])
    for name in ("drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop"):
        assert float(figures[name][0]) == pytest.approx(expected[name], rel=1e-5)


def test_specificity_separates_word_neurons_from_everywhere_neurons():
    influential, scored = _masks()
    generator = torch.Generator().manual_seed(1)
    columns = []
    for _ in range(6):
        everywhere = 1.0 + 0.1 * torch.rand(TOKENS, generator=generator)  # fires on every token alike
        on_words = 0.1 + 2.0 * influential.float()  # fires on the influential tokens
        columns.append(torch.stack([everywhere, on_words], 1))  # [tokens, 2]
    eligible = torch.ones((6, 2), dtype=torch.bool)
    rows = specificity(columns, [influential] * 6, [scored] * 6, eligible, draws=300, seed=0)
    assert rows[1]["percentile"] == 100.0 and rows[1]["z"] > 10
    assert rows[0]["z"] < 3 and rows[0]["percentile"] < 97.5  # not specific: inside its null
    assert rows == specificity(columns, [influential] * 6, [scored] * 6, eligible, draws=300, seed=0)


def test_a_selection_crowding_one_level_bin_gets_coarser_bins():
    # The 20 strongest neurons of layer 0 fill its top level bin (16 of 128 neurons with 8 bins,
    # 32 with 4): the null falls back to 2 bins, still matched in layer and never drawing them.
    dense, _ = _world(seed=1)
    levels = dense[0].total[0]
    top = torch.sort(levels, descending=True).indices[:20]
    scores = [{layer: torch.zeros(NEURONS) for layer in range(LAYERS)} for _ in dense]
    for text in scores:
        text[0][top] = torch.linspace(1.0, 0.5, 20)
    plan = make_plan(dense[:1], scores[:1], select_neurons(scores[:1], 20), 20, StatsOptions(null_draws=30))
    assert plan.null is not None and plan.null.shape == (30, 20)
    assert bool((plan.null // NEURONS == 0).all())
    assert not set(plan.null.reshape(-1).tolist()) & set(top.tolist())
