"""NSA on the real embedded SmolLM2 with real SST-2 sentences and a real pruned variant,
every figure checked against a brute-force capture of the dense and the pruned model."""

from __future__ import annotations

import json

import pytest
import torch

from backend.data.encoding import encode_for_attribution
from backend.nsa.capture import NeuronCapture
from backend.nsa.schema import validate_result
from backend.nsa.service import attribute, dataset_examples
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied, variant_masks

pytestmark = pytest.mark.integration


def full_activations(loaded, text: str) -> dict[int, torch.Tensor]:
    """Brute force: every layer's ``[tokens, neurons]`` on the input NSA uses (start token first)."""
    encoded = encode_for_attribution(loaded.tokenizer, text, loaded.max_length)
    with torch.no_grad(), NeuronCapture(loaded.model, loaded.adapter) as capture:
        loaded.model(input_ids=torch.tensor([encoded.input_ids]))
    return {layer: capture.batched(layer, 1)[0] for layer in capture.layers}


def _removed_by_mask(loaded, masks: dict, layer: int, index: int) -> float:
    """Brute force from the variant's mask file: share of the neuron's weights pruned that were
    not already zero in the dense model (the GGUF-derived weights have a few exact zeros)."""
    prefix = f"model.layers.{layer}.mlp."
    params = dict(loaded.model.named_parameters())
    pruned = total = 0
    for name, select in (("gate_proj", lambda t: t[index]), ("up_proj", lambda t: t[index]),
                         ("down_proj", lambda t: t[:, index])):
        mask = select(masks[prefix + name + ".weight"])
        dense = select(params[prefix + name + ".weight"].detach())
        pruned += int((mask & (dense != 0)).sum())
        total += mask.numel()
    return pruned / total


def test_nsa_on_sst2_against_a_wanda_variant(embedded, isolated_cache):
    down = embedded.adapter.decoder_layers(embedded.model)[5].mlp.down_proj.weight
    checksum = down.double().sum().item()
    variant = create_variant(embedded, PruneConfig("wanda", calibration="sst2", spec=SparsitySpec.parse("0.5"),
                                                   nsamples=4, seqlen=64))
    vid = variant.variant_id
    examples = dataset_examples("sst2", 2, seed=4)
    result = attribute(embedded, examples, variants=[vid], top_k=10, ablate=True, max_new_tokens=32)
    validate_result(json.loads(json.dumps(result)))
    assert down.double().sum().item() == checksum  # the shared model is dense again

    # Step 1: real generations, words that occur in the text and cover their tokens.
    for text_info, example in zip(result["texts"], examples, strict=True):
        assert text_info["tokens"][0] == "" and text_info["offsets"][0] == [0, 0]  # start token
        assert text_info["label"] == example["label_text"]
        influential = text_info["influential"]
        assert influential["source"] == "model" or influential["source"].startswith("fallback:")
        assert isinstance(influential["raw_generation"], str) and influential["raw_generation"]
        assert influential["words"]
        for word in influential["words"]:
            for start, end in word["spans"]:
                assert text_info["text"][start:end].lower() == word["word"].lower()
            covered = "".join(text_info["tokens"][i] for i in word["tokens"])
            assert word["word"].lower() in covered.lower()

    # Steps 2-3 against brute force: full captures of the dense and the pruned model.
    dense = [full_activations(embedded, ex["text"]) for ex in examples]
    with variant_applied(embedded, vid):
        pruned = [full_activations(embedded, ex["text"]) for ex in examples]
    masks = variant_masks(vid)
    block = result["comparison"][0]
    for t, (text_info, heat) in enumerate(zip(result["texts"], result["heatmaps"], strict=True)):
        influential = torch.zeros(len(text_info["tokens"]), dtype=torch.bool)
        for word in text_info["influential"]["words"]:
            influential[word["tokens"]] = True
        dense_sum = pruned_sum = 0.0
        for neuron, row in zip(result["neurons"], heat["neurons"], strict=True):
            layer, index = neuron["layer"], neuron["index"]
            a_dense = dense[t][layer][:, index]
            a_pruned = pruned[t][layer][:, index]
            torch.testing.assert_close(torch.tensor(row["dense"]), a_dense, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(torch.tensor(row["variants"][vid]), a_pruned, rtol=1e-4, atol=1e-4)
            assert row["scale"] == pytest.approx(float(a_dense[1:].abs().max()), rel=1e-4)
            magnitude = dense[t][layer][1:].abs()  # the start token (0) is not scored
            total = magnitude.sum(0)
            expected = float(magnitude[influential[1:], index].sum() / total[index])
            if total[index] < 0.5 * total.median():  # the negligible-activation rule
                expected = 0.0
            assert neuron["text_scores"][t] == pytest.approx(expected, rel=1e-4)
            dense_sum += float(a_dense[influential].abs().sum())
            pruned_sum += float(a_pruned[influential].abs().sum())
        assert block["texts"][t]["drop_influential"] == pytest.approx(1 - pruned_sum / dense_sum, abs=1e-4)
    for neuron in result["neurons"]:
        removed = neuron["variants"][vid]["weights_removed"]["fraction"]
        assert removed == pytest.approx(_removed_by_mask(embedded, masks, neuron["layer"], neuron["index"]))

    # Ablation with two texts: only the cross-fitted check (neurons chosen on one text, zeroed on
    # the other, against matched random sets); no in-sample figure.
    assert result["ablation"] is None
    ablation = result["causal"]["ablation"]
    assert ablation["examples"] == 2 and len(ablation["null_draw_effect"]) == result["causal"]["draws"]
    assert 0 < ablation["p_value"] <= 1 and ablation["reading"].startswith("Zeroing these")