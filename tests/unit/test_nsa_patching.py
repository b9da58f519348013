"""Activation patching: exactness against plain forward passes, hooks left behind, the planted case."""

from __future__ import annotations

import copy

import pytest
import torch

from backend.models.adapters import weight_matrix
from backend.models.hooks import neuron_hooks
from backend.nsa.patching import (
    ALL_ROW,
    FIRST_DRAW_ROW,
    SELECTED_ROW,
    VARIANT_ROW,
    condition_masks,
    dense_run,
    patched_log_probs,
)
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import get_task
from tests.conftest import tiny_loaded

SENTIMENT = get_task("sentiment")
TEXTS = [
    "The movie was painfully slow, but the acting was beautiful.",
    "A delightful, warm and funny film that never drags.",
    "Pruning removes weights; calibration data decides which ones.",
]


def _all_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _neuron_input_variant(loaded, seed: int = 1):
    """A copy whose neuron-producing weights (gate/up, fc1, c_fc) lost a random half: every
    difference to the dense model flows through the neurons."""
    variant = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in loaded.adapter.decoder_layers(variant):
            for module in loaded.adapter.neuron_input_modules(layer):
                matrix = weight_matrix(module)
                matrix.mul_(torch.rand(matrix.shape, generator=generator) > 0.5)
    return variant


def _flat(layer: int, index: int, width: int) -> int:
    return layer * width + index


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_patching_every_neuron_gives_dense_margin_and_none_gives_the_variants(family):
    loaded = tiny_loaded(family, layers=3)
    width = loaded.adapter.neuron_count(loaded.model)
    layers = list(range(3))
    variant = _neuron_input_variant(loaded)
    # One selected neuron per layer, so the "all neurons of the selected layers" row is every
    # neuron of every layer; two draws elsewhere in those layers.
    selected = torch.tensor([_flat(layer, 3, width) for layer in layers])
    draws = torch.tensor([[_flat(layer, 5 + d, width) for layer in layers] for d in range(2)])
    masks = condition_masks(selected, draws, width)
    for text in TEXTS:
        probe = encode_probe(loaded.tokenizer, text, SENTIMENT, loaded.max_length)
        run = dense_run(loaded.model, loaded.adapter, probe, 0, layers)
        hooks = _all_hooks(variant)
        rows = patched_log_probs(variant, loaded.adapter, run, masks)  # [rows, 2]
        assert _all_hooks(variant) == hooks
        with torch.no_grad():
            plain_variant = label_log_probs(variant, probe)[0]
        dense_margin = float(margin(run.log_probs, 0))
        variant_margin = float(margin(plain_variant, 0))
        assert abs(dense_margin - variant_margin) > 1e-3  # the variant does differ
        assert float(margin(rows[ALL_ROW], 0)) == pytest.approx(dense_margin, abs=1e-5)
        assert float(margin(rows[VARIANT_ROW], 0)) == pytest.approx(variant_margin, abs=1e-5)
        # Patching a subset lands somewhere else than both ends.
        assert float(margin(rows[SELECTED_ROW], 0)) != pytest.approx(dense_margin, abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_patching_in_the_dense_model_changes_nothing(family):
    loaded = tiny_loaded(family)
    width = loaded.adapter.neuron_count(loaded.model)
    selected = torch.tensor([_flat(0, 1, width), _flat(1, 7, width)])
    draws = torch.tensor([[_flat(0, 2, width), _flat(1, 8, width)]] * 3)
    probe = encode_probe(loaded.tokenizer, TEXTS[0], SENTIMENT, loaded.max_length)
    run = dense_run(loaded.model, loaded.adapter, probe, 0, [0, 1])
    rows = patched_log_probs(loaded.model, loaded.adapter, run, condition_masks(selected, draws, width))
    assert rows.shape == (FIRST_DRAW_ROW + 3, 2)
    torch.testing.assert_close(rows, run.log_probs.expand_as(rows), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_hooks_are_removed_when_the_forward_pass_raises(family):
    loaded = tiny_loaded(family)
    hooks = _all_hooks(loaded.model)
    ids = torch.tensor([[1, 2, 3, 4]])

    def explode(_neurons):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), neuron_hooks(loaded.model, loaded.adapter, {1: explode}):
        loaded.model(input_ids=ids)
    assert _all_hooks(loaded.model) == hooks
    variant = _neuron_input_variant(loaded)
    probe = encode_probe(loaded.tokenizer, TEXTS[0], SENTIMENT, loaded.max_length)
    run = dense_run(loaded.model, loaded.adapter, probe, 0, [0])
    run.neurons[0] = []  # a dense run missing its recorded calls: the hook raises StopIteration
    width = loaded.adapter.neuron_count(loaded.model)
    with pytest.raises(RuntimeError):
        patched_log_probs(variant, loaded.adapter, run, condition_masks(torch.tensor([1]), torch.tensor([[2]]), width))
    assert _all_hooks(variant) == _all_hooks(loaded.model) == hooks


def test_condition_masks_rows():
    width = 10
    selected = torch.tensor([3, 14, 17])  # layer 0: 3; layer 1: 4, 7
    draws = torch.tensor([[5, 11, 12], [6, 18, 19]])
    masks = condition_masks(selected, draws, width)
    assert sorted(masks) == [0, 1]
    assert masks[0].shape == (FIRST_DRAW_ROW + 2, width)
    assert not masks[0][VARIANT_ROW].any() and not masks[1][VARIANT_ROW].any()
    assert masks[0][SELECTED_ROW].nonzero().flatten().tolist() == [3]
    assert masks[1][SELECTED_ROW].nonzero().flatten().tolist() == [4, 7]
    assert masks[0][ALL_ROW].all() and masks[1][ALL_ROW].all()
    assert masks[0][FIRST_DRAW_ROW].nonzero().flatten().tolist() == [5]
    assert masks[1][FIRST_DRAW_ROW + 1].nonzero().flatten().tolist() == [8, 9]
