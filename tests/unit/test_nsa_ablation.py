"""The causal check: zeroing neurons by hook, random control sets, margins against brute force."""

from __future__ import annotations

import pytest
import torch

from backend.models.adapters import weight_matrix
from backend.nsa.ablation import NeuronAblation, ablation_check, random_control_sets
from backend.nsa.probe import encode_probe
from backend.nsa.tasks import get_task
from tests.conftest import tiny_loaded

TEXT = "The movie was painfully slow, but the acting was beautiful."
SENTIMENT = get_task("sentiment")


def _all_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_hook_ablation_equals_zeroed_down_projection_columns(tiny):
    ids = torch.tensor([encode_probe(tiny.tokenizer, TEXT, SENTIMENT, tiny.max_length).input_ids])
    chosen = {0: [1, 5, 9], 1: [0, 63]}
    hooks = _all_hooks(tiny.model)
    with torch.no_grad():
        plain = tiny.model(input_ids=ids).logits
        with NeuronAblation(tiny.model, tiny.adapter, chosen):
            hooked = tiny.model(input_ids=ids).logits
        assert _all_hooks(tiny.model) == hooks
        assert torch.equal(tiny.model(input_ids=ids).logits, plain)  # nothing left behind
        layers = tiny.adapter.decoder_layers(tiny.model)
        for layer, indices in chosen.items():
            weight_matrix(tiny.adapter.neuron_module(layers[layer]))[:, indices] = 0.0
        zeroed = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(hooked, zeroed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hooked, plain)


def test_one_ablation_per_batch_row_equals_separate_passes(tiny):
    ids = torch.tensor([encode_probe(tiny.tokenizer, TEXT, SENTIMENT, tiny.max_length).input_ids])
    rows = [{}, {0: [1, 2]}, {1: [5], 0: [7]}]
    with torch.no_grad():
        with NeuronAblation(tiny.model, tiny.adapter, rows):
            batched = tiny.model(input_ids=ids.expand(3, -1)).logits
        for r, row in enumerate(rows):
            with NeuronAblation(tiny.model, tiny.adapter, row):
                alone = tiny.model(input_ids=ids).logits[0]
            torch.testing.assert_close(batched[r], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_random_controls_match_layers_and_counts_and_avoid_the_selected():
    selected = {2: [0, 1, 2], 7: [10]}
    draws = random_control_sets(selected, neurons_per_layer=12, draws=6, seed=3)
    assert len(draws) == 6 and draws == random_control_sets(selected, 12, 6, seed=3)
    for draw in draws:
        assert {layer: len(ix) for layer, ix in draw.items()} == {2: 3, 7: 1}
        assert not set(draw[2]) & {0, 1, 2} and 10 not in draw[7]
        assert all(0 <= i < 12 for ix in draw.values() for i in ix)
    assert len({tuple(d[2]) for d in draws}) > 1
    assert draws != random_control_sets(selected, 12, 6, seed=4)


def _brute_margin(loaded, text, label, chosen=None) -> float:
    """log p(label words) - log p(other) by scoring each continuation token by token."""
    probe = encode_probe(loaded.tokenizer, text, SENTIMENT, loaded.max_length)
    totals = []
    for ids in probe.label_ids:
        full = torch.tensor([probe.input_ids + ids])
        with torch.no_grad():
            if chosen:
                with NeuronAblation(loaded.model, loaded.adapter, chosen):
                    logits = loaded.model(input_ids=full).logits[0]
            else:
                logits = loaded.model(input_ids=full).logits[0]
        log_probs = torch.log_softmax(logits.double(), -1)
        start = len(probe.input_ids) - 1
        totals.append(sum(float(log_probs[start + i, token]) for i, token in enumerate(ids)))
    return totals[label] - totals[1 - label]


def test_ablation_margins_equal_brute_force():
    loaded = tiny_loaded("llama")
    selected = {0: [3, 4], 1: [7]}
    report = ablation_check(loaded, [TEXT, "Warm and funny."], selected, SENTIMENT, labels=[1, None], draws=5)
    first, second = report["texts"]
    assert first["label"] == "negative" and first["label_source"] == "gold"
    assert first["margin_intact"] == pytest.approx(_brute_margin(loaded, TEXT, 1), abs=1e-4)
    assert first["margin_ablated"] == pytest.approx(_brute_margin(loaded, TEXT, 1, selected), abs=1e-4)
    assert first["effect"] == pytest.approx(first["margin_intact"] - first["margin_ablated"])
    controls = random_control_sets(selected, 64, 5, seed=0)
    expected = [first["margin_intact"] - _brute_margin(loaded, TEXT, 1, c) for c in controls]
    assert first["random_effects"] == pytest.approx(expected, abs=1e-4)
    assert first["random_mean"] == pytest.approx(sum(expected) / 5, abs=1e-4)
    # Without a gold label the model's own prediction is explained: its margin is >= 0.
    assert second["label_source"] == "predicted" and second["margin_intact"] >= 0
    agg = report["aggregate"]
    assert agg["effect_mean"] == pytest.approx((first["effect"] + second["effect"]) / 2)
    draw_means = [(first["random_effects"][d] + second["random_effects"][d]) / 2 for d in range(5)]
    assert agg["random_effect_mean"] == pytest.approx(sum(draw_means) / 5)
    assert agg["random_effect_std"] == pytest.approx(float(torch.tensor(draw_means).std()))
