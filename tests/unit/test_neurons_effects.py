"""Logit effects, weights removed, test-your-text and the agreement helpers, against hand computations."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from backend.errors import UserError
from backend.models.hooks import neuron_hooks
from backend.neurons.agreement import multiset_overlap, rowwise_pearson
from backend.neurons.effects import logit_direction, logit_effects, weights_removed
from backend.neurons.effects import test_text as neuron_test_text
from tests.conftest import tiny_loaded
from tests.unit.neurons_helpers import pruned_copy

# Where each family keeps the final norm, the down projection and the unembedding, spelled out.
HAND = {
    "llama": lambda m, l: (m.model.norm.weight, m.model.layers[l].mlp.down_proj.weight, m.lm_head.weight),
    "opt": lambda m, l: (
        m.model.decoder.final_layer_norm.weight,
        m.model.decoder.layers[l].fc2.weight,
        m.lm_head.weight,
    ),
    "gpt2": lambda m, l: (m.transformer.ln_f.weight, m.transformer.h[l].mlp.c_proj.weight.t(), m.lm_head.weight),
}


@pytest.mark.parametrize("family", ("llama", "opt", "gpt2"))
def test_logit_effects_equal_hand_computation(family):
    loaded = tiny_loaded(family)
    with torch.no_grad():  # a norm weight that is not all ones, so that leaving it out would show
        for name, param in loaded.model.named_parameters():
            if param.dim() == 1 and ("norm" in name or "ln_f" in name):
                param.uniform_(0.5, 2.0)
    for layer, neuron in ((0, 3), (1, 17)):
        norm, down, unembedding = HAND[family](loaded.model, layer)
        expected = unembedding @ (down[:, neuron] * norm)  # [vocab]
        torch.testing.assert_close(logit_direction(loaded, layer, neuron), expected.detach())
        effects = logit_effects(loaded, layer, neuron, k=5)
        assert [row["token_id"] for row in effects["promoted"]] == expected.topk(5).indices.tolist()
        assert [row["token_id"] for row in effects["suppressed"]] == expected.topk(5, largest=False).indices.tolist()
        assert effects["promoted"][0]["value"] == pytest.approx(expected.max().item(), rel=1e-5)
    with pytest.raises(UserError, match="out of range"):
        logit_effects(loaded, 5, 0)
    with pytest.raises(UserError, match="out of range"):
        logit_effects(loaded, 0, 10_000)


@pytest.mark.parametrize("family", ("llama", "opt", "gpt2"))
def test_weights_removed_counts_zeroed_weights(family):
    dense = tiny_loaded(family)
    variant = pruned_copy(dense, 0.5)
    removed = weights_removed(dense, variant)
    layer = dense.adapter.decoder_layers(dense.model)[1]
    changed = variant.adapter.decoder_layers(variant.model)[1]
    out_before = dense.adapter.neuron_module(layer)
    out_after = variant.adapter.neuron_module(changed)
    from backend.models.adapters import weight_matrix

    column_removed = ((weight_matrix(out_before) != 0) & (weight_matrix(out_after) == 0)).float().mean(0)
    torch.testing.assert_close(removed[1][2], column_removed.double())
    assert 0.4 < removed[1][0].mean().item() < 0.6  # about half of every neuron's weights


@pytest.mark.parametrize("family", ("llama", "gpt2"))
def test_text_equals_capture_without_start_token(family):
    dense = tiny_loaded(family)
    variant = pruned_copy(dense)
    text = "A warm and funny film."
    result = neuron_test_text(dense, 1, 5, text, variant)
    start = dense.tokenizer.eos_token_id  # the tiny tokenizer has no BOS: EOS goes in front
    ids = [start, *dense.tokenizer(text)["input_ids"]]
    for loaded, values in ((dense, result["dense"]), (variant, result["variant"])):
        captured = {}

        def keep(neurons, captured=captured) -> None:  # [1, tokens, neurons]
            captured["a"] = neurons[0, :, 5]

        with neuron_hooks(loaded.model, loaded.adapter, {1: keep}):
            loaded.model(input_ids=torch.tensor([ids]), use_cache=False)
        assert values == pytest.approx(captured["a"][1:].tolist(), rel=1e-6)  # start token dropped
    assert result["token_ids"] == ids[1:] and result["variant"] != result["dense"]
    with pytest.raises(UserError):
        neuron_test_text(dense, 9, 0, "text")


def test_multiset_overlap_equals_counter():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, size=(50, 8)), rng.integers(0, 6, size=(50, 8))
    a[:5, 6:] = -1  # empty slots
    got = multiset_overlap(a, b)
    for row in range(50):
        left, right = Counter(a[row][a[row] >= 0].tolist()), Counter(b[row].tolist())
        shared = sum((left & right).values())
        assert got[row] == pytest.approx(shared / min(sum(left.values()), sum(right.values())))


def test_rowwise_pearson_equals_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 30)), rng.normal(size=(20, 30))
    expected = [np.corrcoef(x[i], y[i])[0, 1] for i in range(20)]
    np.testing.assert_allclose(rowwise_pearson(x, y), expected, rtol=1e-10)
    assert np.isnan(rowwise_pearson(np.ones((1, 5)), y[:1, :5]))[0]
