"""NSA step 2: neuron scores against hand computations and a brute-force pass over full activations."""

from __future__ import annotations

import pytest
import torch

from backend.data.encoding import encode_text
from backend.errors import UserError
from backend.nsa.capture import capture_text
from backend.nsa.scoring import (
    activation_magnitude,
    layer_mass,
    neuron_scores,
    observe_text,
    score_text,
    select_neurons,
)

# 4 tokens x 3 neurons, signed.
ACTS = torch.tensor([
    [1.0, -2.0, 0.5],
    [3.0, 0.0, 0.5],
    [-1.0, 2.0, 0.5],
    [0.0, 4.0, 0.5],
])
INFLUENTIAL = torch.tensor([False, True, True, False])


def test_scores_equal_hand_computation_abs():
    # |a| totals: 5, 8, 2 (median 5, bar 0.5 * 5 = 2.5); on tokens 1-2: 4, 2, 1.
    # Neuron 2 (total 2 < 2.5) is negligible and scores 0.
    scores, eligible = neuron_scores(activation_magnitude(ACTS, "abs"), INFLUENTIAL)
    torch.testing.assert_close(scores, torch.tensor([4 / 5, 2 / 8, 0.0]))
    assert eligible.tolist() == [True, True, False]


def test_scores_equal_hand_computation_positive_part():
    # max(a, 0) totals: 4, 6, 2 (median 4, bar 2: neuron 2 is exactly at the bar, eligible);
    # on tokens 1-2: 3, 2, 1.
    scores, eligible = neuron_scores(activation_magnitude(ACTS, "positive"), INFLUENTIAL)
    torch.testing.assert_close(scores, torch.tensor([3 / 4, 2 / 6, 1 / 2]))
    assert eligible.all()


def test_special_tokens_are_left_out_of_both_sums():
    scored = torch.tensor([False, True, True, True])  # token 0 is, say, a BOS
    scores, _ = neuron_scores(activation_magnitude(ACTS), INFLUENTIAL, scored)
    # totals without token 0: 4, 6, 1.5 (median 4, bar 2 -> neuron 2 negligible)
    torch.testing.assert_close(scores, torch.tensor([4 / 4, 2 / 6, 0.0]))


def test_negligible_neuron_cannot_win_by_dividing_tiny_numbers():
    # Neuron 3 fires almost nowhere, but only on the influential token: its raw ratio is 1.
    acts = torch.cat([ACTS, torch.tensor([[0.0], [1e-6], [0.0], [0.0]])], dim=1)
    raw, _ = neuron_scores(acts.abs(), INFLUENTIAL, negligible_fraction=0.0)
    assert raw[3] == 1.0 and int(raw.argmax()) == 3
    ruled, eligible = neuron_scores(acts.abs(), INFLUENTIAL)
    assert ruled[3] == 0.0 and not eligible[3]
    assert int(ruled.argmax()) == 0
    selection = select_neurons([{0: ruled}], top_k=1)
    assert (selection.neurons[0].layer, selection.neurons[0].index) == (0, 0)


def test_silent_layer_scores_zero_not_nan():
    scores, eligible = neuron_scores(torch.zeros(3, 4), torch.tensor([True, False, False]))
    assert torch.equal(scores, torch.zeros(4)) and not eligible.any()


def test_selection_aggregates_by_mean_and_breaks_ties_by_position():
    text_a = {0: torch.tensor([0.9, 0.1, 0.5]), 1: torch.tensor([0.5, 0.0, 0.2])}
    text_b = {0: torch.tensor([0.1, 0.3, 0.5]), 1: torch.tensor([0.5, 0.9, 0.2])}
    selection = select_neurons([text_a, text_b], top_k=4, per_layer_k=2)
    # means: layer 0 -> 0.5, 0.2, 0.5 ; layer 1 -> 0.5, 0.45, 0.2
    picked = [(n.layer, n.index) for n in selection.neurons]
    assert picked == [(0, 0), (0, 2), (1, 0), (1, 1)]
    assert selection.neurons[3].score == pytest.approx(0.45)
    assert selection.neurons[3].text_scores == pytest.approx([0.0, 0.9])
    assert [i for i, _ in selection.per_layer[1]] == [0, 1]
    assert selection.indices_by_layer() == {0: [0, 2], 1: [0, 1]}


def test_unknown_activation_mode():
    with pytest.raises(UserError, match="activation mode"):
        activation_magnitude(ACTS, "square")


def test_layer_mass_hand_computation():
    mass = layer_mass(ACTS.abs(), [[1, 2], [3]])
    torch.testing.assert_close(mass.tokens, torch.tensor([3.5, 3.5, 3.5, 4.5]))
    # word 0: max over tokens 1-2 per neuron = 3, 2, 0.5 -> 5.5 ; word 1: 0, 4, 0.5 -> 4.5
    torch.testing.assert_close(mass.words, torch.tensor([5.5, 4.5]))


def test_streamed_scores_equal_brute_force_on_full_activations(tiny):
    text = "The movie was painfully slow, but the acting was beautiful."
    encoded = encode_text(tiny.tokenizer, text, tiny.max_length)
    influential = torch.zeros(len(encoded.input_ids), dtype=torch.bool)
    influential[[3, 4, len(encoded.input_ids) - 2]] = True
    scored = torch.ones_like(influential)
    streamed = score_text(tiny, encoded.input_ids, influential, scored, [[3, 4]], keep=5)

    full = capture_text(tiny, text)  # every layer as [tokens, neurons]
    per_text = {}
    for layer, acts in full.layers.items():
        magnitude = acts.abs()
        total = magnitude.sum(0)
        expected = magnitude[influential].sum(0) / total
        expected[total < 0.5 * total.median()] = 0.0
        torch.testing.assert_close(streamed.layers[layer].scores, expected, rtol=1e-5, atol=1e-6)
        kept = streamed.layers[layer]
        top5 = torch.sort(expected, descending=True, stable=True).indices[:5]
        assert kept.candidates.tolist() == top5.tolist()
        torch.testing.assert_close(kept.candidate_activations, acts[:, top5])
        torch.testing.assert_close(kept.mass.tokens, magnitude.sum(1))
        torch.testing.assert_close(kept.mass.words, magnitude[[3, 4]].amax(0).sum().reshape(1))
        per_text[layer] = expected
    selection = select_neurons([streamed.scores()], top_k=6)
    everything = torch.cat([per_text[layer] for layer in sorted(per_text)])
    assert [n.score for n in selection.neurons] == pytest.approx(everything.sort(descending=True).values[:6].tolist())


def test_passes_stop_after_the_deepest_needed_layer_and_leave_no_hooks(tiny):
    encoded = encode_text(tiny.tokenizer, "Slow and beautiful.", tiny.max_length)
    layers = tiny.adapter.decoder_layers(tiny.model)
    hooks_before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny.model.modules())
    calls = []
    handle = layers[1].register_forward_hook(lambda *_: calls.append(1))
    try:
        observed = observe_text(tiny, encoded.input_ids, {0: [2, 5]}, [[1]])
        assert calls == []  # layer 1 never ran: only layer 0's neurons were asked for
        full = capture_text(tiny, "Slow and beautiful.", [0]).layers[0]
        torch.testing.assert_close(observed[0][0], full[:, [2, 5]])
        score_text(tiny, encoded.input_ids, torch.ones(len(encoded.input_ids), dtype=torch.bool),
                   torch.ones(len(encoded.input_ids), dtype=torch.bool), [], keep=3)
        assert calls == [1]  # the dense pass reaches the last layer
    finally:
        handle.remove()
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in tiny.model.modules()) == hooks_before
