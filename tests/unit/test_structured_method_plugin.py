"""A structured method added by one module (tests/unit/toy_neurons.py) and one registry line prunes
over the CLI and HTTP with the exact neuron count, lists its options, and removes the neurons its
score ranks lowest (checked against the score computed from the dense layer's own activations)."""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main
from backend.data.windows import calibration_windows
from backend.pruning.registry import register
from backend.pruning.structured import neuron_method
from backend.pruning.variants import list_variants, variant_masks
from tests.conftest import tiny_loaded
from tests.unit import toy_neurons
from tests.unit.test_api import make_client, wait_for_job  # noqa: F401 - make_client is a fixture

# The whole of adding a structured method: its module and this line.
register(neuron_method("toy-quiet", "toy: remove MLP neurons of least E[h²]^power",
                       toy_neurons.select_quiet, toy_neurons.QuietOptions))

NEURONS = 64  # per layer of the tiny models
NSAMPLES, SEQLEN = 4, 32


def removed_per_layer(loaded, variant_id: str) -> list[torch.Tensor]:
    """Per decoder layer, the neurons whose down-projection column and input rows the variant's
    masks remove (the masks are in module layout; the tiny LLaMA's are torch Linear, [out, in])."""
    masks, adapter, found = variant_masks(variant_id), loaded.adapter, []
    for index in range(len(adapter.decoder_layers(loaded.model))):
        prefix = f"model.layers.{index}"
        removed = masks[f"{prefix}.{adapter.mlp_output}.weight"].all(dim=0)  # [n]
        for name in adapter.mlp_inputs:
            assert torch.equal(masks[f"{prefix}.{name}.weight"].all(dim=1), removed)
        found.append(torch.nonzero(removed).squeeze(1))
    return found


def dense_layer0_scores(loaded, calibration: str, power: float) -> torch.Tensor:
    """E[h²]^power of layer 0's neurons over the calibration windows, from the dense model: [n]."""
    windows = calibration_windows(loaded.tokenizer, calibration, NSAMPLES, SEQLEN, 0,
                                  max_length=loaded.max_length)
    down = loaded.adapter.decoder_layers(loaded.model)[0].get_submodule(loaded.adapter.mlp_output)
    seen = []
    handle = down.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            loaded.model(input_ids=windows, use_cache=False)
    finally:
        handle.remove()
    h = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).double()  # [tokens, n]
    return h.pow(2).mean(dim=0).pow(power)


def assert_toy_variant(loaded, variant_id: str, calibration: str, ratio: float, power: float) -> None:
    count = round(ratio * NEURONS)
    removed = removed_per_layer(loaded, variant_id)
    assert [r.numel() for r in removed] == [count] * len(removed)
    scores = dense_layer0_scores(loaded, calibration, power)  # layer 0 sees the dense inputs
    kept = torch.ones(NEURONS, dtype=torch.bool)
    kept[removed[0]] = False
    assert scores[removed[0]].max() <= scores[kept].min() * (1 + 1e-6)


@pytest.mark.parametrize("ratio,power", [(0.25, 1.0), (0.5, 2.0)])
def test_a_structured_method_from_one_module_prunes_over_the_cli(isolated_cache, tiny_model_dir,
                                                                 calibration_file, capsys, ratio, power):
    argv = ["prune", "--model", str(tiny_model_dir("llama")), "--method", "toy-quiet",
            "--neuron-ratio", str(ratio), "--power", str(power), "--calibration", calibration_file,
            "--nsamples", str(NSAMPLES), "--seqlen", str(SEQLEN)]
    assert main(argv) == 0
    variant_id = capsys.readouterr().out.splitlines()[0]
    [manifest] = list_variants()
    assert manifest["id"] == variant_id and manifest["stale"] is False
    assert manifest["options"] == {"power": power, "sink_tokens": 0}
    assert_toy_variant(tiny_loaded("llama"), variant_id, calibration_file, ratio, power)
    assert main(["methods", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert listed["toy-quiet"]["structured"] is True
    assert listed["toy-quiet"]["options"]["properties"]["power"]["maximum"] == 4


def test_a_structured_method_from_one_module_prunes_over_http(make_client):  # noqa: F811 - the fixture
    loaded = tiny_loaded("llama")
    client = make_client(loaded=loaded)
    described = {row["name"]: row for row in client.get("/methods").json()}
    assert described["toy-quiet"]["structured"] is True and described["toy-quiet"]["needs_calibration"]
    assert set(described["toy-quiet"]["options"]["properties"]) == {"power", "sink_tokens"}
    request = {"method": "toy-quiet", "sparsity": "neurons:0.25", "calibration": "lambada",
               "nsamples": NSAMPLES, "seqlen": SEQLEN, "options": {"power": 0.5}}
    accepted = client.post("/variants", json=request)
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    assert_toy_variant(loaded, job["result"]["variant_id"], "lambada", 0.25, 0.5)
    refused = client.post("/variants", json={**request, "options": {"power": 5}})
    assert refused.status_code == 422 and "power" in refused.json()["detail"], refused.text
    refused = client.post("/variants", json={**request, "sparsity": "0.5"})
    assert refused.status_code == 400 and "neuron" in refused.json()["detail"], refused.text
