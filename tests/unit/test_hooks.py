"""The one hook mechanism on tiny Llama, OPT and GPT-2 models: exact neurons, exact replacement,
hooks removed on errors, a StopForward that no ``except Exception`` swallows, per-layer arguments."""

from __future__ import annotations

import pytest
import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from backend.errors import UserError
from backend.models.adapters import adapter_for, weight_matrix
from backend.models.hooks import StopForward, call_until_stopped, neuron_hooks, pre_hooks
from backend.pruning.layers import capture_decoder_inputs, same_arguments
from tests.unit.test_capture import _hand_neurons, _mlp_entry


def _all_hook_counts(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _two_windows(seed: int = 0) -> torch.Tensor:
    return torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(seed))  # [batch, tokens]


def test_neurons_are_batched_and_equal_hand_computation(tiny):
    ids = _two_windows()
    layers = tiny.adapter.decoder_layers(tiny.model)
    mlp_inputs: dict[int, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}

    def keep_mlp_input(index):
        return lambda _module, args: mlp_inputs.__setitem__(index, args[0].detach().clone())

    def keep_neurons(index):
        return lambda neurons: seen.__setitem__(index, neurons.detach().clone())

    entries = {_mlp_entry(tiny, layer): keep_mlp_input(index) for index, layer in enumerate(layers)}
    with torch.no_grad(), pre_hooks(entries), \
            neuron_hooks(tiny.model, tiny.adapter, {index: keep_neurons(index) for index in range(len(layers))}):
        tiny.model(input_ids=ids, use_cache=False)
    width = tiny.adapter.neuron_count(tiny.model)
    for index, layer in enumerate(layers):
        assert seen[index].shape == (2, 12, width)  # OPT too: its flattened layout is undone
        with torch.no_grad():
            expected = _hand_neurons(tiny, layer, mlp_inputs[index]).reshape(2, 12, width)
        torch.testing.assert_close(seen[index], expected, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(seen[index][0], seen[index][1])  # rows are different windows


def test_replacing_one_row_equals_the_model_with_a_doubled_down_projection(tiny):
    # Doubling every neuron of layer 0 in batch row 1 only: row 1 must equal the model whose layer-0
    # down projection weight is doubled, row 0 the plain model. A layout mix-up fails both.
    ids = _two_windows(1)

    def double_row_one(neurons):  # [batch, tokens, neurons]
        replaced = neurons.clone()
        replaced[1] *= 2
        return replaced

    with torch.no_grad():
        plain = tiny.model(input_ids=ids, use_cache=False).logits
        with neuron_hooks(tiny.model, tiny.adapter, {0: double_row_one}):
            hooked = tiny.model(input_ids=ids, use_cache=False).logits
        down = weight_matrix(tiny.adapter.neuron_module(tiny.adapter.decoder_layers(tiny.model)[0]))
        dense = down.clone()
        down.mul_(2)
        doubled = tiny.model(input_ids=ids, use_cache=False).logits
        down.copy_(dense)
    torch.testing.assert_close(hooked[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(hooked[1], doubled[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(hooked[1], plain[1], atol=1e-3)


def test_hooks_removed_after_an_exception(tiny):
    ids = _two_windows()
    before = _all_hook_counts(tiny.model)

    def fail(_neurons):
        raise ValueError("boom")

    with torch.no_grad():
        plain = tiny.model(input_ids=ids, use_cache=False).logits
        with pytest.raises(ValueError, match="boom"), neuron_hooks(tiny.model, tiny.adapter, {0: fail, 1: fail}):
            assert _all_hook_counts(tiny.model) > before
            tiny.model(input_ids=ids, use_cache=False)
        assert _all_hook_counts(tiny.model) == before
        assert torch.equal(tiny.model(input_ids=ids, use_cache=False).logits, plain)
    with pytest.raises(UserError, match="out of range"), neuron_hooks(tiny.model, tiny.adapter, {7: fail}):
        pass
    assert _all_hook_counts(tiny.model) == before


def test_stop_forward_is_not_swallowed_by_except_exception(tiny):
    ids = _two_windows()
    layers = tiny.adapter.decoder_layers(tiny.model)
    reached_layer_one = []

    def stop(_neurons):
        raise StopForward

    with pre_hooks({layers[1]: lambda *_: reached_layer_one.append(1)}), \
            neuron_hooks(tiny.model, tiny.adapter, {0: stop}):
        with pytest.raises(StopForward):
            try:
                tiny.model(input_ids=ids, use_cache=False)
            except Exception:  # noqa: BLE001 - what careless model or caller code does
                pytest.fail("StopForward was caught as an Exception")
        assert call_until_stopped(tiny.model, input_ids=ids, use_cache=False) is None
    assert reached_layer_one == []  # the forward really ended at layer 0's MLP
    assert _all_hook_counts(tiny.model) == 0


def test_each_layer_gets_its_own_arguments_where_they_differ():
    # Gemma 2 alternates sliding-window (4 tokens here) and global attention: layer 1's mask is not
    # layer 0's. The captured arguments must be what each layer receives in a full forward.
    config = Gemma2Config(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=4,
                          max_position_embeddings=256)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config).eval()
    layers = adapter_for(model).decoder_layers(model)
    batches = [_two_windows(0), _two_windows(1)[:1]]
    with torch.no_grad():
        hidden, calls = capture_decoder_inputs(model, layers, batches, torch.device("cpu"))
    for batch, ids in enumerate(batches):
        recorded = {}

        def keep(index, into=recorded):
            def record(_layer, args, kwargs):
                into[index] = (args[0] if args else kwargs["hidden_states"], kwargs)
            return record

        with torch.no_grad(), pre_hooks({layer: keep(i) for i, layer in enumerate(layers)}, with_kwargs=True):
            model(input_ids=ids, use_cache=False)
        assert torch.equal(hidden[batch], recorded[0][0])
        for index in range(len(layers)):
            expected = {k: v for k, v in recorded[index][1].items() if k != "hidden_states"}
            assert same_arguments(calls[batch][index].kwargs, expected), (batch, index)
        assert not same_arguments(calls[batch][0].kwargs, calls[batch][1].kwargs)
