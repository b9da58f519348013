"""Neuron capture on tiny Llama, OPT and GPT-2 models: exact values, no side effects."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from backend.cli import main
from backend.data.encoding import encode_text
from backend.errors import UserError
from backend.nsa.capture import NeuronCapture, capture_text

TEXT = "The movie was painfully slow, but the acting was beautiful."


def _hand_neurons(loaded, layer, mlp_input: torch.Tensor) -> torch.Tensor:
    """The down projection's input computed by hand from the MLP's input, per family."""
    family = loaded.adapter.family
    if family == "llama":
        mlp = layer.mlp
        return F.silu(F.linear(mlp_input, mlp.gate_proj.weight)) * F.linear(mlp_input, mlp.up_proj.weight)
    if family == "opt":
        return F.relu(F.linear(mlp_input, layer.fc1.weight, layer.fc1.bias))
    if family == "gpt2":
        conv = layer.mlp.c_fc
        pre = torch.addmm(conv.bias, mlp_input.reshape(-1, mlp_input.shape[-1]), conv.weight)
        pre = pre.view(*mlp_input.shape[:-1], -1)
        return 0.5 * pre * (1.0 + torch.tanh((2.0 / torch.pi) ** 0.5 * (pre + 0.044715 * pre**3)))
    raise AssertionError(family)


def _mlp_entry(loaded, layer) -> torch.nn.Module:
    """The module whose input is the MLP's input (after the pre-MLP norm)."""
    return layer.fc1 if loaded.adapter.family == "opt" else layer.mlp


def _all_hook_counts(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def test_capture_equals_hand_computation(tiny):
    layers = tiny.adapter.decoder_layers(tiny.model)
    mlp_inputs: dict[int, torch.Tensor] = {}
    handles = [
        _mlp_entry(tiny, layer).register_forward_pre_hook(
            lambda _m, args, i=index: mlp_inputs.__setitem__(i, args[0].detach().clone())
        )
        for index, layer in enumerate(layers)
    ]
    try:
        result = capture_text(tiny, TEXT)
    finally:
        for handle in handles:
            handle.remove()

    assert sorted(result.layers) == list(range(len(layers)))
    for index, layer in enumerate(layers):
        with torch.no_grad():
            expected = _hand_neurons(tiny, layer, mlp_inputs[index]).reshape(len(result.tokens), -1)
        captured = result.layers[index]
        assert captured.shape == (len(result.tokens), tiny.adapter.neuron_count(tiny.model))
        torch.testing.assert_close(captured, expected, rtol=1e-6, atol=1e-6)
        assert captured.abs().max() > 0.01  # a zero tensor would pass trivially


def test_capture_leaves_logits_unchanged_and_removes_hooks(tiny):
    ids = torch.tensor([encode_text(tiny.tokenizer, TEXT, 256).input_ids])
    hooks_before = _all_hook_counts(tiny.model)
    with torch.no_grad():
        plain = tiny.model(input_ids=ids).logits
        with NeuronCapture(tiny.model, tiny.adapter) as capture:
            per_layer = 2 if tiny.adapter.mlp_flattens_tokens else 1  # OPT: + its layer's input shape
            assert _all_hook_counts(tiny.model) == hooks_before + per_layer * len(capture.layers)
            hooked = tiny.model(input_ids=ids).logits
    assert torch.equal(plain, hooked)
    assert _all_hook_counts(tiny.model) == hooks_before


def test_hooks_removed_when_forward_raises(tiny):
    hooks_before = _all_hook_counts(tiny.model)
    bad_ids = torch.tensor([[10_000_000]])  # out of vocabulary: the embedding raises
    with pytest.raises(IndexError), NeuronCapture(tiny.model, tiny.adapter):
        tiny.model(input_ids=bad_ids)
    assert _all_hook_counts(tiny.model) == hooks_before


def test_offsets_point_into_the_text(tiny):
    text = "Caf\u00e9 na\u00efve \U0001F600 -- slow, slow!"
    result = capture_text(tiny, text, [0])
    covered = set()
    for token, (start, end) in zip(result.tokens, result.offsets, strict=True):
        assert 0 <= start < end <= len(text) and text[start:end] == token
        covered.update(range(start, end))
    # Byte-level tokens of one character share (part of) its span: spans overlap, never reorder.
    assert [s for s, _ in result.offsets] == sorted(s for s, _ in result.offsets)
    assert [e for _, e in result.offsets] == sorted(e for _, e in result.offsets)
    assert covered == set(range(len(text))) - {i for i, ch in enumerate(text) if ch == " "} | (
        covered & {i for i, ch in enumerate(text) if ch == " "})


def test_layer_selection_and_bad_layers(tiny):
    result = capture_text(tiny, TEXT, [1])
    assert list(result.layers) == [1]
    with pytest.raises(UserError, match="out of range"):
        capture_text(tiny, TEXT, [5])
    with pytest.raises(UserError, match="empty"):
        capture_text(tiny, "   ", [0])


def test_truncation_is_flagged(tiny):
    long_text = " ".join(["slow"] * 400)
    result = capture_text(tiny, long_text, [0])
    assert result.truncated
    assert len(result.tokens) == tiny.max_length


def test_cli_activations_writes_json(tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("opt")
    out = tmp_path / "acts.json"
    assert main(["activations", "--model", str(model_dir), "--text", TEXT, "--layers", "0,1",
                 "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert set(payload["layers"]) == {"0", "1"}
    assert len(payload["tokens"]) == len(payload["offsets"]) == len(payload["layers"]["0"])
    assert len(payload["layers"]["0"][0]) == 64


def test_cli_bad_input_exit_2_one_line(tmp_path, capsys):
    assert main(["activations", "--model", "no/such-model-xyz", "--text", "", "--json",
                 str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:")
    assert not (tmp_path / "x.json").exists()
    assert main(["activations", "--model", "../etc", "--text", "hi", "--json", "x.json"]) == 2
