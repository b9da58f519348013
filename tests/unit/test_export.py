"""Exported checkpoints (hf and compressed-tensors) on tiny Llama, OPT and GPT-2 models: logits
equal to the in-tool variant, 2:4 groups intact, the package's own loader, lm-eval on the folder,
the model card, the HTTP download and bad input."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from backend.cli import main
from backend.models.loader import load_model
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import load_variant
from tests.conftest import TINY_CORPUS

TOKENS = torch.tensor([[5, 17, 99, 250, 3, 42, 7, 128, 64, 300, 11, 2]])  # [batch, tokens]


def _variant(model_dir, calibration: str, method: str = "wanda", spec: str = "0.5") -> str:
    loaded = load_model(str(model_dir))
    config = PruneConfig(method=method, calibration=calibration, spec=SparsitySpec.parse(spec),
                         nsamples=4, seqlen=32, seed=0)
    return create_variant(loaded, config).variant_id


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits  # [batch, tokens, vocab]


@pytest.mark.parametrize("family,method,spec", [
    ("llama", "wanda", "2:4"), ("opt", "sparsegpt", "0.5"), ("gpt2", "ria", "0.5"),
])
def test_hf_export_logits_equal_the_variant(isolated_cache, tiny_model_dir, calibration_file, tmp_path,
                                            family, method, spec):
    model_dir = tiny_model_dir(family)
    variant_id = _variant(model_dir, calibration_file, method, spec)
    out = tmp_path / "export"
    assert main(["export", variant_id, "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    in_tool = load_variant(str(model_dir.resolve()), variant_id).model.eval()
    assert torch.equal(_logits(exported), _logits(in_tool))
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert not torch.equal(_logits(exported), _logits(dense))  # the pruning is really in the files
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no staging left


def _pruned_linears(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in state.items()
            if ".layers." in name and name.endswith("proj.weight")}


def test_two_four_export_keeps_every_group_and_round_trips_compressed_tensors(
        isolated_cache, tiny_model_dir, calibration_file, tmp_path):
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig

    model_dir = tiny_model_dir("llama")
    variant_id = _variant(model_dir, calibration_file, "sparsegpt", "2:4")
    hf_dir, ct_dir = tmp_path / "hf", tmp_path / "ct"
    assert main(["export", variant_id, "--out", str(hf_dir)]) == 0
    assert main(["export", variant_id, "--out", str(ct_dir), "--format", "compressed-tensors"]) == 0

    linears = _pruned_linears(load_file(str(hf_dir / "model.safetensors")))
    assert len(linears) == 2 * 7
    for name, weight in linears.items():  # [out, in]: groups of 4 consecutive inputs
        zeros_per_group = (weight.reshape(weight.shape[0], -1, 4) == 0).sum(dim=-1)
        assert bool((zeros_per_group >= 2).all()), name

    config = json.loads((ct_dir / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors"
    assert config["sparsity_config"]["format"] == "sparse-24-bitmask"
    assert config["sparsity_config"]["global_sparsity"] == pytest.approx(0.5)
    stored = load_file(str(ct_dir / "model.safetensors"))
    q_proj = "model.layers.0.self_attn.q_proj"
    assert f"{q_proj}.weight" not in stored
    assert stored[f"{q_proj}.compressed"].shape == (32, 16)  # kept values: half of each row of 32
    assert (ct_dir / "model.safetensors").stat().st_size < (hf_dir / "model.safetensors").stat().st_size

    # The package's own loader: an empty model from the config, then decompress from the folder.
    restored = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ct_dir)).eval()
    ModelCompressor.from_pretrained(str(ct_dir)).decompress(str(ct_dir), restored)
    reference = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    for (name, a), (_, b) in zip(reference.state_dict().items(), restored.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(_logits(restored), _logits(reference))


def test_other_patterns_use_the_generic_bitmask(isolated_cache, tiny_model_dir, calibration_file, tmp_path):
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig

    model_dir = tiny_model_dir("llama")
    variant_id = _variant(model_dir, calibration_file, "wanda", "4:8")
    out = tmp_path / "ct48"
    assert main(["export", variant_id, "--out", str(out), "--format", "compressed-tensors"]) == 0
    sparsity = json.loads((out / "config.json").read_text())["quantization_config"]["sparsity_config"]
    assert (sparsity["format"], sparsity["sparsity_structure"]) == ("sparse-bitmask", "4:8")
    restored = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out)).eval()
    ModelCompressor.from_pretrained(str(out)).decompress(str(out), restored)
    in_tool = load_variant(str(model_dir.resolve()), variant_id).model.eval()
    assert torch.equal(_logits(restored), _logits(in_tool))


def test_lm_eval_runs_on_the_export_with_the_variants_answers(isolated_cache, tiny_model_dir,
                                                              calibration_file, tmp_path):
    """lm-eval's own `hf` model reads the folder; per-example log-likelihoods equal the in-memory variant's."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from backend.evaluation.registry import choose_sources, prepared_tasks

    model_dir = tiny_model_dir("llama")
    variant_id = _variant(model_dir, calibration_file)
    out = tmp_path / "export"
    assert main(["export", variant_id, "--out", str(out)]) == 0
    in_tool = load_variant(str(model_dir.resolve()), variant_id)

    def answers(model, **extra) -> list:
        results = lm_eval.simple_evaluate(model=model, tasks=["sst2"], task_manager=prepared.manager,
                                          limit=5, log_samples=True, bootstrap_iters=0, **extra)
        return [sample["filtered_resps"] for sample in results["samples"]["sst2"]]

    with prepared_tasks(choose_sources(["sst2"])) as prepared:
        from_folder = answers("hf", model_args=f"pretrained={out},dtype=float32", device="cpu")
        in_memory = answers(HFLM(pretrained=in_tool.model, tokenizer=in_tool.tokenizer, batch_size=1))
    assert len(from_folder) == 5
    assert from_folder == in_memory


def test_model_card_states_configuration_sparsity_and_stored_accuracy(isolated_cache, tiny_model_dir,
                                                                      calibration_file, tmp_path):
    from backend.evaluation.store import DENSE, ResultKey, ResultsStore
    from backend.pruning.variants import read_manifest

    model_dir = tiny_model_dir("llama")
    variant_id = _variant(model_dir, calibration_file, "wanda", "2:4")
    manifest = read_manifest(variant_id)
    store = ResultsStore.from_settings()
    for variant, accuracy in ((variant_id, 0.625), (DENSE, 0.75)):
        store.put(ResultKey(manifest["base_model"], variant, "sst2", 40, "packaged", "0.4.13"),
                  n_examples=40, metrics={"acc,none": accuracy, "acc_stderr,none": 0.0625})
    out = tmp_path / "export"
    assert main(["export", variant_id, "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "| method | wanda |" in card
    assert "| sparsity (requested) | 2:4 (50.00% of weights) |" in card
    achieved = manifest["achieved_sparsity"]["overall"]
    assert f"| sparsity (achieved, prunable linears) | {100 * achieved:.2f}% |" in card
    assert "| sst2 | 62.50% ± 6.25% | 75.00% ± 6.25% | 40 |" in card


@pytest.mark.parametrize("argv,needle", [
    (["export", "nosuchvariant", "--out", "{tmp}/x"], "unknown variant"),
    (["export", "../etc", "--out", "{tmp}/x"], "invalid variant id"),
    (["export", "{variant}", "--out", "{tmp}/missing/x"], "does not exist"),
    (["export", "{variant}", "--out", "{tmp}/taken"], "already exists"),
    (["export", "{variant}", "--out", "{tmp}/x", "--format", "onnx"], "invalid choice"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(isolated_cache, tiny_model_dir, calibration_file,
                                                      tmp_path, capsys, argv, needle):
    variant_id = _variant(tiny_model_dir("llama"), calibration_file)
    (tmp_path / "taken").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    filled = [part.format(tmp=tmp_path, variant=variant_id) for part in argv]
    assert main(filled) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and "Traceback" not in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_compressed_tensors_refuses_gpt2_conv1d(isolated_cache, tiny_model_dir, calibration_file, tmp_path, capsys):
    variant_id = _variant(tiny_model_dir("gpt2"), calibration_file, "wanda", "2:4")
    assert main(["export", variant_id, "--out", str(tmp_path / "x"), "--format", "compressed-tensors"]) == 2
    assert "--format hf" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.")]


def test_http_export_streams_a_zip_that_loads(isolated_cache, tmp_path):
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from tests.conftest import tiny_loaded

    loaded = tiny_loaded("llama")
    settings = ApiSettings(**isolated_cache.model_dump())
    with TestClient(create_app(settings, loaded=loaded), raise_server_exceptions=False) as client:
        calibration = tmp_path / "calibration.txt"
        calibration.write_text("\n\n".join(TINY_CORPUS * 6), encoding="utf-8")
        variant_id = create_variant(loaded, PruneConfig(method="wanda", calibration=f"file:{calibration}",
                                                        spec=SparsitySpec.parse("2:4"), nsamples=4,
                                                        seqlen=32)).variant_id
        expected = _logits_with_variant(loaded, variant_id)
        response = client.get(f"/variants/{variant_id}/export")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            archive.extractall(tmp_path / "unzipped")
        exported = AutoModelForCausalLM.from_pretrained(tmp_path / "unzipped" / variant_id).eval()
        assert torch.equal(_logits(exported), expected)
        assert torch.equal(_logits(loaded.model), _logits(tiny_loaded("llama").model))  # dense restored

        missing = client.get("/variants/nosuchvariant/export")
        assert missing.status_code == 404 and "unknown variant" in missing.json()["detail"]
        bad = client.get(f"/variants/{variant_id}/export", params={"format": "onnx"})
        assert bad.status_code == 422 and "format" in bad.json()["detail"]
    exports = isolated_cache.cache_dir / "exports"
    assert not exports.exists() or not any(exports.iterdir())  # staging removed after the response


def _logits_with_variant(loaded, variant_id: str) -> torch.Tensor:
    from backend.pruning.variants import variant_applied

    with variant_applied(loaded, variant_id):
        return _logits(loaded.model)


def test_structured_variant_exports_a_smaller_model_with_the_same_logits(isolated_cache, tiny_model_dir,
                                                                     calibration_file, tmp_path, capsys):
    model_dir = tiny_model_dir("opt")
    loaded = load_model(str(model_dir))
    variant_id = create_variant(loaded, PruneConfig(method="mi", calibration=calibration_file,
                                                    spec=SparsitySpec.neurons(0.25), nsamples=4,
                                                    seqlen=32)).variant_id
    out = tmp_path / "mi"
    assert main(["export", variant_id, "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    assert exported.config.ffn_dim == 48  # 25 % of 64 neurons sliced out of every layer
    for layer in exported.model.decoder.layers:
        assert tuple(layer.fc1.weight.shape) == (48, 32) and tuple(layer.fc2.weight.shape) == (32, 48)
    variant = load_variant(str(model_dir.resolve()), variant_id).model.eval()
    torch.testing.assert_close(_logits(exported), _logits(variant), rtol=0, atol=1e-5)
    assert "sliced out" in (out / "README.md").read_text()
    assert main(["export", variant_id, "--out", str(tmp_path / "ct"), "--format", "compressed-tensors"]) == 2
    assert "structured" in capsys.readouterr().err
