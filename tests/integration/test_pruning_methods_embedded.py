"""The pruning methods on real layers of the embedded SmolLM2: the ordering the papers report on
the layer-wise reconstruction objective (SparseGPT < Wanda < magnitude), exact sparsity on real
weights, and RIA's channel permutation keeping more of its score than the plain N:M mask."""

from __future__ import annotations

import math

import pytest
import torch

from backend.models.adapters import weight_matrix
from backend.pruning.methods.magnitude import magnitude_mask
from backend.pruning.methods.ria import nm_kept_score, ria_mask, ria_metric
from backend.pruning.methods.sparsegpt import sparsegpt_prune
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics

pytestmark = pytest.mark.integration

CALIBRATION_TEXT = (
    "Pruning removes weights from a trained network; the calibration text decides which ones. "
    "The movie was painfully slow, but the acting was beautiful and the music stayed with me for days. "
    "Question: If all cats are animals and Tom is a cat, is Tom an animal? Answer: yes, because every "
    "cat is an animal. In 1969 the first humans walked on the Moon, and millions watched the grainy "
    "pictures on television. Water boils at 100 degrees Celsius at sea level, but at lower "
    "temperatures on high mountains."
)
LAYER = 3


@pytest.fixture(scope="module")
def layer_inputs(embedded):
    """Inputs [tokens, in] of two linears of one decoder layer, captured on the calibration text."""
    layer = embedded.adapter.decoder_layers(embedded.model)[LAYER]
    modules = {"q_proj": layer.self_attn.q_proj, "down_proj": embedded.adapter.neuron_module(layer)}
    captured = {}

    def keep(name):
        def hook(_module, args):
            captured[name] = args[0].detach().reshape(-1, args[0].shape[-1]).float()

        return hook

    handles = [module.register_forward_pre_hook(keep(name)) for name, module in modules.items()]
    try:
        ids = embedded.tokenizer(CALIBRATION_TEXT, return_tensors="pt")["input_ids"].to(
            embedded.device
        )
        with torch.no_grad():
            embedded.model(ids)
    finally:
        for handle in handles:
            handle.remove()
    # clones: the methods must not touch the shared model's weights
    return {
        name: (weight_matrix(module).detach().clone().float(), captured[name])
        for name, module in modules.items()
    }


@pytest.mark.parametrize("name", ["q_proj", "down_proj"])
@pytest.mark.parametrize("label", ["0.5", "2:4"])
def test_reconstruction_order_on_real_layers(layer_inputs, name, label):
    weight, inputs = layer_inputs[name]
    spec = SparsitySpec.parse(label)
    stats = InputStatistics(inputs.shape[1], inputs.device, hessian=True)
    stats.update(inputs)
    dense = inputs @ weight.T

    def relative_error(pruned):
        return float(torch.linalg.norm(dense - inputs @ pruned.T) / torch.linalg.norm(dense))

    result = sparsegpt_prune(weight, stats.hessian, spec)
    masks = {
        "magnitude": magnitude_mask(weight, spec),
        "wanda": wanda_mask(weight, stats.act_norm, spec),
        "sparsegpt": result.mask,
    }
    for mask in masks.values():
        if spec.kind == "nm":
            assert torch.equal(
                mask.view(weight.shape[0], -1, 4).sum(2),
                torch.full((weight.shape[0], weight.shape[1] // 4), 2),
            )
        else:
            assert int(mask.sum()) == math.floor(0.5 * weight.numel() + 0.5)
    sparsegpt_error = relative_error(result.weight)
    wanda_error = relative_error(weight.masked_fill(masks["wanda"], 0.0))
    magnitude_error = relative_error(weight.masked_fill(masks["magnitude"], 0.0))
    assert sparsegpt_error < wanda_error < magnitude_error


def test_ria_channel_permutation_on_a_real_layer(layer_inputs):
    weight, inputs = layer_inputs["down_proj"]
    norms = inputs.pow(2).sum(0).sqrt()
    spec = SparsitySpec.nm(2, 4)
    mask, permutation = ria_mask(weight, norms, spec, channel_permutation=True)
    assert torch.equal(
        mask[:, permutation].view(weight.shape[0], -1, 4).sum(2),
        torch.full((weight.shape[0], weight.shape[1] // 4), 2),
    )
    metric = ria_metric(weight, norms)
    assert nm_kept_score(metric, permutation, 2, 4) > nm_kept_score(metric, None, 2, 4)
