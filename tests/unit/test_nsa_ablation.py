"""Zeroing neurons by hook, and the one-text (in-sample) ablation against brute-force margins."""

from __future__ import annotations

import pytest
import torch

from backend.models.adapters import weight_matrix
from backend.nsa.ablation import NeuronAblation
from backend.nsa.causal import _null_draws, in_sample_ablation
from backend.nsa.patching import dense_run
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


def _as_dict(flat: torch.Tensor, width: int) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for value in flat.tolist():
        grouped.setdefault(value // width, []).append(value % width)
    return grouped


@pytest.mark.parametrize("label", [1, None])
def test_in_sample_ablation_equals_brute_force(label):
    loaded = tiny_loaded("llama")
    width = loaded.adapter.neuron_count(loaded.model)
    selected = torch.tensor([0 * width + 3, 0 * width + 4, 1 * width + 7])
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)
    report = in_sample_ablation(loaded.model, loaded.adapter, probe, label, selected, draws=6, seed=2)
    intact_logits = dense_run(loaded.model, loaded.adapter, probe, None, []).log_probs
    expected_label = label if label is not None else int(intact_logits.argmax())
    assert report["label"] == expected_label
    assert report["label_source"] == ("gold" if label is not None else "dense prediction")
    intact = _brute_margin(loaded, TEXT, expected_label)
    ablated = _brute_margin(loaded, TEXT, expected_label, _as_dict(selected, width))
    assert report["examples"] == 1
    assert report["effect"]["value"] == pytest.approx(intact - ablated, abs=1e-4)
    assert report["effect"]["interval"] is None  # one text: no bootstrap interval
    # The null: the matched draws (same layers, same activation level on this text), brute-forced.
    levels = dense_run(loaded.model, loaded.adapter, probe, None, []).levels
    draws, _ = _null_draws(levels, selected, 6, 2)
    assert draws.shape == (6, 3)
    for draw in draws:
        assert not set(draw.tolist()) & set(selected.tolist())
        assert sorted(v // width for v in draw.tolist()) == [0, 0, 1]
    expected_null = [intact - _brute_margin(loaded, TEXT, expected_label, _as_dict(d, width)) for d in draws]
    assert report["null_draw_effect"] == pytest.approx(expected_null, abs=1e-4)
    beyond = sum(value >= intact - ablated for value in expected_null)
    assert report["p_value"] == pytest.approx((1 + beyond) / 7)
    assert report["reading"].startswith("In-sample") and "in-sample" in report["method"]
