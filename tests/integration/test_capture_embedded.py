"""Neuron capture on the real embedded SmolLM2-135M-Instruct with a real sentence."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from backend.config import Settings
from backend.models.loader import load_model
from backend.nsa.capture import NeuronCapture, capture_text
from tests.conftest import SHARED_CACHE

pytestmark = pytest.mark.integration

SENTENCE = "The movie was painfully slow, but the acting was beautiful."


def test_capture_on_real_sentence_equals_hand_computation(embedded):
    layers = embedded.adapter.decoder_layers(embedded.model)
    assert len(layers) == 30 and embedded.adapter.neuron_count(embedded.model) == 1536
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [
        layers[index].mlp.register_forward_pre_hook(
            lambda _m, args, i=index: mlp_inputs.__setitem__(i, args[0].detach().clone())
        )
        for index in (0, 5, 29)
    ]
    try:
        result = capture_text(embedded, SENTENCE, [0, 5, 29])
    finally:
        for handle in handles:
            handle.remove()

    assert "".join(result.tokens) == SENTENCE  # no byte-split characters in this sentence
    assert [SENTENCE[s:e] for s, e in result.offsets] == result.tokens
    assert " beautiful" in result.tokens
    for index in (0, 5, 29):
        mlp = layers[index].mlp
        with torch.no_grad():
            x = mlp_inputs[index][0]
            expected = F.silu(F.linear(x, mlp.gate_proj.weight)) * F.linear(x, mlp.up_proj.weight)
        assert result.layers[index].shape == (len(result.tokens), 1536)
        torch.testing.assert_close(result.layers[index], expected, rtol=1e-5, atol=1e-5)
        # SwiGLU neurons are signed: a real sentence gives both signs.
        assert result.layers[index].min() < 0 < result.layers[index].max()


def test_capture_on_real_model_keeps_logits_and_removes_hooks(embedded):
    ids = torch.tensor([embedded.tokenizer(SENTENCE)["input_ids"]])
    hooks = sum(len(m._forward_pre_hooks) for m in embedded.model.modules())
    with torch.no_grad():
        plain = embedded.model(input_ids=ids).logits
        with NeuronCapture(embedded.model, embedded.adapter):
            hooked = embedded.model(input_ids=ids).logits
    assert torch.equal(plain, hooked)
    assert sum(len(m._forward_pre_hooks) for m in embedded.model.modules()) == hooks


def test_converted_checkpoint_reloads_with_identical_logits(embedded):
    started = time.perf_counter()
    again = load_model("smollm2-135m-instruct", device="cpu", dtype="float32",
                       settings=Settings(cache_dir=SHARED_CACHE))
    print(f"\nreload of the converted checkpoint: {time.perf_counter() - started:.2f}s")
    assert again.source == "embedded"
    ids = torch.tensor([embedded.tokenizer(SENTENCE)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(embedded.model(input_ids=ids).logits, again.model(input_ids=ids).logits)
