"""Real shrinking: a structured variant saved as a smaller model loads with plain transformers and
computes the same logits as the zeroed-neuron variant, on tiny Llama, OPT and GPT-2 models."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.errors import UserError
from backend.pruning.config import PruneConfig
from backend.pruning.engine import create_variant
from backend.pruning.shrink import shrink_structured
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied
from tests.conftest import TINY_CORPUS

WIDTH_KEY = {"llama": "intermediate_size", "opt": "ffn_dim", "gpt2": "n_inner"}


@pytest.mark.parametrize("method", ["structured-obs", "flap"])
def test_shrunk_model_loads_and_equals_the_zeroed_variant(tiny, isolated_cache, calibration_file,
                                                          tmp_path, method):
    config = PruneConfig(method=method, calibration=calibration_file, spec=SparsitySpec.neurons(0.5),
                         nsamples=4, seqlen=32)
    variant = create_variant(tiny, config).variant_id
    dense_state = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    info = shrink_structured(tiny, variant, tmp_path / "small")
    assert info["intermediate_size"] == 32 and info["dense_size"] == 64
    assert info["parameters"] < info["dense_parameters"]
    for key, value in tiny.model.state_dict().items():  # the base model is left dense
        assert torch.equal(value, dense_state[key])

    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    assert getattr(small.config, WIDTH_KEY[tiny.adapter.family]) == 32
    down = tiny.adapter.neuron_module(tiny.adapter.decoder_layers(small)[0])
    assert max(down.weight.shape) == 32 or min(down.weight.shape) == 32
    input_ids = tiny.tokenizer("\n".join(TINY_CORPUS[:3]), return_tensors="pt").input_ids
    with torch.no_grad(), variant_applied(tiny, variant):
        expected = tiny.model(input_ids=input_ids).logits
    with torch.no_grad():
        logits = small(input_ids=input_ids).logits
    assert (logits - expected).abs().max() < 1e-5
    with torch.no_grad():  # and it is not simply the dense model
        assert (tiny.model(input_ids=input_ids).logits - expected).abs().max() > 1e-3


def test_shrink_refuses_unstructured_variants_and_existing_folders(tiny, isolated_cache,
                                                                  calibration_file, tmp_path):
    wanda = create_variant(tiny, PruneConfig(method="wanda", calibration=calibration_file,
                                             nsamples=4, seqlen=32)).variant_id
    with pytest.raises(UserError, match="not structured"):
        shrink_structured(tiny, wanda, tmp_path / "a")
    structured = create_variant(tiny, PruneConfig(method="random-neurons", calibration=calibration_file,
                                                  spec=SparsitySpec.neurons(0.25), nsamples=4,
                                                  seqlen=32)).variant_id
    (tmp_path / "taken").mkdir()
    with pytest.raises(UserError, match="already exists"):
        shrink_structured(tiny, structured, tmp_path / "taken")


def test_layers_with_different_counts_are_padded_with_zero_neurons(tiny):
    """The uniform rule: every layer keeps the largest kept count; padding neurons stay exactly 0."""
    from backend.models.adapters import weight_matrix
    from backend.pruning.shrink import shrunk_model

    adapter = tiny.adapter
    with torch.no_grad():
        for layer, count in zip(adapter.decoder_layers(tiny.model), (10, 20), strict=True):
            removed = torch.arange(3, 3 + count)
            for name in adapter.mlp_inputs:
                module = layer.get_submodule(name)
                weight_matrix(module)[removed] = 0
                if getattr(module, "bias", None) is not None:
                    module.bias[removed] = 0
            weight_matrix(layer.get_submodule(adapter.mlp_output))[:, removed] = 0
    small, info = shrunk_model(tiny.model, adapter)
    assert info["intermediate_size"] == 54  # 64 - 10: layer 1 keeps 10 of its removed neurons
    input_ids = tiny.tokenizer(TINY_CORPUS[4], return_tensors="pt").input_ids
    with torch.no_grad():
        assert (small(input_ids=input_ids).logits - tiny.model(input_ids=input_ids).logits).abs().max() < 1e-5
