"""`prunelens speed`: what the measurement runs and reports, checked against hand counts on tiny
Llama, OPT and GPT-2 models (timings themselves are noise here; their bookkeeping is not)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from backend.cli import main
from backend.errors import UserError
from backend.evaluation.speed import SpeedSettings, measure_speed, stored_speeds, variant_model
from backend.pruning.config import PruneConfig
from backend.pruning.engine import create_variant
from backend.pruning.spec import SparsitySpec
from backend.pruning.variants import read_manifest, variant_applied, variant_masks
from tests.conftest import TINY_CORPUS, tiny_loaded

FAST = SpeedSettings(batch=2, seqlen=16, repeats=3, warmup=0)


def _variant(loaded, calibration_file, method: str, spec: SparsitySpec) -> str:
    config = PruneConfig(method=method, calibration=calibration_file, spec=spec, nsamples=4, seqlen=32)
    return create_variant(loaded, config).variant_id


def test_structured_variant_is_timed_shrunk_with_the_exact_parameter_count(tiny, isolated_cache,
                                                                           calibration_file):
    variant = _variant(tiny, calibration_file, "random-neurons", SparsitySpec.neurons(0.5))
    result = measure_speed(tiny, variant, FAST)
    dense, pruned = result["models"]["dense"], result["models"]["variant"]
    # every layer loses 32 of 64 neurons: their rows of each MLP input and columns of the output
    adapter = tiny.adapter
    layer = adapter.decoder_layers(tiny.model)[0]
    per_neuron = sum(module.weight.numel() // 64 for module in adapter.neuron_input_modules(layer))
    per_neuron += adapter.neuron_module(layer).weight.numel() // 64
    per_neuron += sum(1 for module in adapter.neuron_input_modules(layer)
                      if getattr(module, "bias", None) is not None)
    removed = 32 * per_neuron * len(adapter.decoder_layers(tiny.model))
    assert dense["parameters"] - pruned["parameters"] == removed
    assert result["kind"] == "neurons" and "smaller" in result["expectation"]
    # the speed-up is the median of the per-repeat ratios of the recorded timings
    ratios = [d / v for d, v in zip(dense["seconds"], pruned["seconds"], strict=True)]
    assert len(ratios) == FAST.repeats
    assert result["speedup"] == pytest.approx(statistics.median(ratios))
    assert pruned["speedup_range"] == [min(ratios), max(ratios)]
    assert dense["tokens_per_second"] == pytest.approx(FAST.batch * FAST.seqlen / statistics.median(dense["seconds"]))


def test_the_timed_variant_computes_the_variant(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama")
    for spec, method in ((SparsitySpec.unstructured(0.5), "wanda"), (SparsitySpec.neurons(0.25), "flap")):
        variant = _variant(loaded, calibration_file, method, spec)
        model = variant_model(loaded, variant, read_manifest(variant))
        input_ids = loaded.tokenizer("\n".join(TINY_CORPUS[:2]), return_tensors="pt").input_ids
        with torch.no_grad(), variant_applied(loaded, variant):
            expected = loaded.model(input_ids=input_ids).logits
        with torch.no_grad():
            assert (model(input_ids=input_ids).logits - expected).abs().max() < 1e-5


def test_unstructured_and_nm_say_no_speedup_on_cpu_and_count_the_zeros(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama")
    for spec in (SparsitySpec.unstructured(0.5), SparsitySpec.nm(2, 4)):
        variant = _variant(loaded, calibration_file, "magnitude", spec)
        result = measure_speed(loaded, variant, FAST)
        pruned = result["models"]["variant"]
        assert pruned["parameters"] == result["models"]["dense"]["parameters"]  # zeros are still stored
        zeros = sum(int(mask.sum()) for mask in variant_masks(variant).values())
        assert zeros > 0
        assert result["models"]["dense"]["nonzero_parameters"] - pruned["nonzero_parameters"] == zeros
        assert result["sparsity"] == read_manifest(variant)["sparsity"]
        assert "no speed-up" in result["expectation"]
        assert "variant_sparse_kernels" not in result["models"]  # CPU: no semi-structured kernels
    assert len(stored_speeds(settings=None)) == 2


def test_speed_cli_json_and_bad_input(isolated_cache, calibration_file, capsys, tiny_model_dir):
    path = tiny_model_dir("llama")
    loaded = tiny_loaded("llama")
    loaded.name = str(path)
    variant = _variant(loaded, calibration_file, "random-neurons", SparsitySpec.neurons(0.5))
    assert main(["speed", variant, "--batch", "1", "--seqlen", "8", "--repeats", "2", "--warmup", "0",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["variant_id"] == variant and payload["speedup"] == payload["models"]["variant"]["speedup"]
    assert stored_speeds(variant)[0]["speedup"] == payload["speedup"]
    for argv, message in ((["speed", "0" * 20], "variant"), (["speed", variant, "--batch", "0"], "--batch"),
                          (["speed", variant, "--seqlen", "100000"], "tokens")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_a_variant_of_another_model_is_refused(isolated_cache, calibration_file):
    variant = _variant(tiny_loaded("llama"), calibration_file, "magnitude", SparsitySpec.unstructured(0.5))
    other = tiny_loaded("opt")
    with pytest.raises(UserError, match="pruned from"):
        measure_speed(other, variant, FAST)


def test_speed_over_http_as_a_job_stored_and_listed(isolated_cache):
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from tests.unit.test_api import SMALL_PRUNE, assert_json_error, wait_for_job

    app = create_app(ApiSettings(**isolated_cache.model_dump()), loaded=tiny_loaded("llama"))
    with TestClient(app, raise_server_exceptions=False) as client:
        accepted = client.post("/variants", json={**SMALL_PRUNE, "method": "magnitude"})
        variant = accepted.json()["variant_id"]
        assert wait_for_job(client, accepted.json()["job"]["id"])["state"] == "succeeded"
        assert client.get(f"/variants/{variant}/speed").json() == []
        started = client.post(f"/variants/{variant}/speed", json={"batch": 1, "seqlen": 8, "repeats": 2})
        assert started.status_code == 202, started.text
        job = wait_for_job(client, started.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        stored = client.get(f"/variants/{variant}/speed").json()
        assert [row["speedup"] for row in stored] == [job["result"]["speedup"]]
        assert client.get("/speed").json()[0]["variant_id"] == variant
        assert_json_error(client.get(f"/variants/{'0' * 20}/speed"), 404)
        assert client.post(f"/variants/{variant}/speed", json={"batch": 0}).status_code == 422
        assert_json_error(client.post(f"/variants/{variant}/speed", json={"batch": 256, "seqlen": 8192}), 400,
                          "tokens")
