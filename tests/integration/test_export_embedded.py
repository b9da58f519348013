"""Export of a 2:4 variant of the embedded SmolLM2-135M: the folder loads in transformers with the
variant's exact logits, lm-eval's `hf` model runs an offline task on it, and the compressed-tensors
folder decompresses through that package's own loader to the same weights."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from backend.export.checkpoint import export_variant
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import variant_applied


def test_embedded_two_four_export(embedded, isolated_cache, tmp_path):
    import lm_eval
    from compressed_tensors.compressors import ModelCompressor

    from backend.evaluation.registry import choose_sources, prepared_tasks

    variant_id = create_variant(embedded, PruneConfig(
        method="wanda", calibration="lambada", spec=SparsitySpec.parse("2:4"), nsamples=4, seqlen=64,
    )).variant_id
    hf_dir = export_variant(variant_id, tmp_path / "hf", loaded=embedded).path
    ct_dir = export_variant(variant_id, tmp_path / "ct", export_format="compressed-tensors", loaded=embedded).path
    tokens = embedded.tokenizer("The movie was painfully slow, but the acting was beautiful.",
                                return_tensors="pt").input_ids  # [1, tokens]
    with torch.no_grad(), variant_applied(embedded, variant_id):
        expected = embedded.model(tokens).logits  # [1, tokens, vocab]

    exported = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.equal(exported(tokens).logits, expected)
    for layer in exported.model.layers:
        weight = layer.mlp.down_proj.weight  # [hidden, neurons]: groups of 4 inputs
        assert bool(((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())

    restored = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ct_dir), dtype=torch.float32).eval()
    ModelCompressor.from_pretrained(str(ct_dir)).decompress(str(ct_dir), restored)
    restored.tie_weights()
    with torch.no_grad():
        assert torch.equal(restored(tokens).logits, expected)
    assert (ct_dir / "model.safetensors").stat().st_size < 0.8 * (hf_dir / "model.safetensors").stat().st_size

    with prepared_tasks(choose_sources(["sst2"])) as prepared:
        results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_dir},dtype=float32",
                                          tasks=["sst2"], task_manager=prepared.manager, limit=5,
                                          device="cpu", bootstrap_iters=0)
    assert results["n-samples"]["sst2"]["effective"] == 5
    assert results["results"]["sst2"]["acc,none"] in {0.0, 0.2, 0.4, 0.6, 0.8, 1.0}  # k of 5 right
