"""Structured neuron methods through the engine on tiny Llama, OPT and GPT-2 models: exact neuron
counts per layer, compensation that lowers the layer's output error, FLAP's mean-preserving bias."""

from __future__ import annotations

import pytest
import torch

from backend.data.windows import calibration_windows
from backend.errors import UserError
from backend.models.adapters import weight_matrix
from backend.pruning.config import PruneConfig
from backend.pruning.engine import create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied
from tests.conftest import tiny_loaded

NSAMPLES, SEQLEN = 4, 32
METHODS = ("random-neurons", "magnitude-neurons", "flap", "structured-obs", "mi")


def _config(method, calibration, ratio, **options):
    return PruneConfig(method=method, calibration=calibration, spec=SparsitySpec.neurons(ratio),
                       nsamples=NSAMPLES, seqlen=SEQLEN, seed=0, **options)


def removed_neurons(loaded, layer):
    """Neurons whose input rows are all zero (and bias) in every MLP input projection."""
    adapter = loaded.adapter
    dead = None
    for name in adapter.mlp_inputs:
        module = layer.get_submodule(name)
        rows = (weight_matrix(module) == 0).all(dim=1)
        if getattr(module, "bias", None) is not None:
            rows &= module.bias == 0
        dead = rows if dead is None else dead & rows
    columns = (weight_matrix(layer.get_submodule(adapter.mlp_output)) == 0).all(dim=0)
    assert torch.equal(dead, columns), "a neuron's rows and its down column go together"
    return torch.nonzero(dead).squeeze(1)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ratio,count", [(0.1, 6), (0.3, 19), (0.5, 32)])
def test_exact_neuron_count_per_layer_and_dense_restored(tiny, isolated_cache, calibration_file,
                                                         method, ratio, count):
    dense = {name: p.detach().clone() for name, p in tiny.model.named_parameters()}
    result = create_variant(tiny, _config(method, calibration_file, ratio))
    with variant_applied(tiny, result.variant_id):
        sets = [removed_neurons(tiny, layer) for layer in tiny.adapter.decoder_layers(tiny.model)]
    assert [s.numel() for s in sets] == [count] * len(sets)  # 64 neurons per layer
    for name, param in tiny.model.named_parameters():
        assert torch.equal(param, dense[name])
    if method == "random-neurons":  # each layer draws its own neurons
        assert not torch.equal(sets[0], sets[1])


def _layer0_mlp_output(loaded, calibration):
    """The down projection's input and output on layer 0 over the calibration windows."""
    windows = calibration_windows(loaded.tokenizer, calibration, NSAMPLES, SEQLEN, 0,
                                  max_length=loaded.max_length)
    down = loaded.adapter.decoder_layers(loaded.model)[0].get_submodule(loaded.adapter.mlp_output)
    seen = {}

    def keep(module, args, output):
        seen["h"], seen["out"] = args[0].reshape(-1, args[0].shape[-1]), output.reshape(-1, output.shape[-1])

    handle = down.register_forward_hook(keep)
    with torch.no_grad():
        loaded.model(input_ids=windows)
    handle.remove()
    return seen["h"], seen["out"]


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("method,options", [("mi", {}), ("structured-obs", {}),
                                            ("mi", {"estimator": "joint"})])
def test_compensation_lowers_the_layer_output_error(isolated_cache, calibration_file, family,
                                                    method, options):
    loaded = tiny_loaded(family)
    _, dense_out = _layer0_mlp_output(loaded, calibration_file)
    errors = {}
    for compensate in (False, True):
        result = create_variant(loaded, _config(method, calibration_file, 0.3,
                                                compensate=compensate, **options))
        with variant_applied(loaded, result.variant_id):
            _, out = _layer0_mlp_output(loaded, calibration_file)
        errors[compensate] = float(((out - dense_out) ** 2).sum())
    assert errors[True] < 0.8 * errors[False]


def test_flap_bias_keeps_the_mean_output_of_the_layer(isolated_cache, calibration_file):
    loaded = tiny_loaded("opt")
    _, dense_out = _layer0_mlp_output(loaded, calibration_file)
    result = create_variant(loaded, _config("flap", calibration_file, 0.3))
    assert result.manifest["options"]["compensate"] is True
    with variant_applied(loaded, result.variant_id):
        _, out = _layer0_mlp_output(loaded, calibration_file)
    assert torch.allclose(out.mean(dim=0), dense_out.mean(dim=0), atol=1e-4)
    assert not torch.allclose(out, dense_out, atol=1e-3)  # the neurons are gone, only the mean stays


def test_structured_methods_refuse_weight_sparsity():
    with pytest.raises(UserError, match="neuron-ratio"):
        PruneConfig(method="flap", calibration="lambada").validate()
    with pytest.raises(UserError, match="estimator"):
        PruneConfig(method="mi", calibration="lambada", spec=SparsitySpec.neurons(0.2),
                    estimator="kernel").validate()


def test_random_neurons_seed_is_part_of_the_variant(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama")
    ids, sets = [], []
    for seed in (0, 1):
        config = PruneConfig(method="random-neurons", calibration=calibration_file,
                             spec=SparsitySpec.neurons(0.25), draw_seed=seed)
        result = create_variant(loaded, config)
        ids.append(result.variant_id)
        with variant_applied(loaded, result.variant_id):
            sets.append(removed_neurons(loaded, loaded.adapter.decoder_layers(loaded.model)[0]))
    assert ids[0] != ids[1] and not torch.equal(sets[0], sets[1])
    with pytest.raises(UserError, match="unknown option"):  # no data, nothing to compensate with
        PruneConfig(method="random-neurons", spec=SparsitySpec.neurons(0.25), compensate=True).validate()
