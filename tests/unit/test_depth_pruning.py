"""Depth pruning (shortgpt, mi-prun, random-blocks): a dropped block's model equals the original with
that block's residual update removed; Block Influence and the Gaussian MI equal brute-force values;
the export loads with plain transformers and has K fewer layers; bad input is refused in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.cli import main
from backend.data.windows import calibration_windows
from backend.pruning.depth import dropped_model
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.methods.mi_prun import gaussian_mi
from backend.pruning.variants import list_variants, read_manifest, variant_applied
from tests.conftest import FAMILIES, tiny_loaded
from tests.unit.test_api import make_client, wait_for_job  # noqa: F401 - make_client is a fixture

NSAMPLES, SEQLEN, LAYERS = 4, 32, 4


def _identity_blocks(loaded, blocks: list[int]):
    """Forward hooks making each block in ``blocks`` return its input: its residual update removed."""
    def passthrough(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    layers = loaded.adapter.decoder_layers(loaded.model)
    return [layers[index].register_forward_hook(passthrough, with_kwargs=True) for index in blocks]


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


def _block_io(loaded, windows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) hidden states of every block in one dense forward: [tokens, hidden] each."""
    seen = []

    def record(_module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        seen.append((hidden.reshape(-1, hidden.shape[-1]).double(), out.reshape(-1, out.shape[-1]).double()))

    handles = [layer.register_forward_hook(record, with_kwargs=True)
               for layer in loaded.adapter.decoder_layers(loaded.model)]
    _logits(loaded.model, windows)
    for handle in handles:
        handle.remove()
    return seen


@pytest.mark.parametrize("family", FAMILIES)
def test_shortgpt_drops_the_blocks_of_lowest_influence(isolated_cache, calibration_file, family):
    loaded = tiny_loaded(family, layers=LAYERS)
    config = PruneConfig("shortgpt", calibration=calibration_file, nsamples=NSAMPLES, seqlen=SEQLEN, drop_blocks=2)
    manifest = create_variant(loaded, config).manifest
    windows = calibration_windows(loaded.tokenizer, calibration_file, NSAMPLES, SEQLEN, 0, max_length=loaded.max_length)
    influence = [1 - float(torch.nn.functional.cosine_similarity(x_in, x_out, dim=-1).mean())
                 for x_in, x_out in _block_io(loaded, windows)]
    assert manifest["block_scores"] == pytest.approx(influence, abs=1e-9)
    assert manifest["dropped_blocks"] == sorted(sorted(range(LAYERS), key=lambda i: influence[i])[:2])
    assert manifest["layers"] == {"dense": LAYERS, "kept": LAYERS - 2}
    assert manifest["sparsity"] == "blocks:2" and "-drop2-" in manifest["id"]
    assert manifest["achieved_sparsity"]["overall"] == pytest.approx(2 / LAYERS, abs=1e-15)
    # The model without the blocks equals the original with their residual updates removed.
    dense_logits = _logits(loaded.model, windows)
    handles = _identity_blocks(loaded, manifest["dropped_blocks"])
    reference = _logits(loaded.model, windows)
    for handle in handles:
        handle.remove()
    assert not torch.allclose(reference, dense_logits, atol=1e-3)  # removing the blocks matters
    smaller = dropped_model(loaded.model, loaded.adapter, manifest["dropped_blocks"])
    assert len(loaded.adapter.decoder_layers(smaller)) == LAYERS - 2
    torch.testing.assert_close(_logits(smaller, windows), reference, atol=1e-5, rtol=0)
    # The stored overlay (zeroed blocks) gives the same function, so every reader of variants agrees.
    with variant_applied(loaded, manifest["id"]):
        torch.testing.assert_close(_logits(loaded.model, windows), reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(_logits(loaded.model, windows), dense_logits, atol=0, rtol=0)  # restored


def test_gaussian_mi_matches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    tokens, features, noise = 20000, 4, 0.5
    x = torch.randn(tokens, features, generator=generator, dtype=torch.float64)
    y = x + noise * torch.randn(tokens, features, generator=generator, dtype=torch.float64)
    expected = features / 2 * math.log(1 + 1 / noise ** 2)  # independent Gaussian channels
    assert gaussian_mi(x, y, rank=features) == pytest.approx(expected, rel=0.02)
    independent = torch.randn(tokens, features, generator=generator, dtype=torch.float64)
    assert gaussian_mi(x, independent, rank=features) < 0.01


@pytest.mark.parametrize("family", FAMILIES)
def test_mi_prun_drops_the_block_of_highest_mi_first(isolated_cache, calibration_file, family):
    loaded = tiny_loaded(family, layers=LAYERS)
    config = PruneConfig("mi-prun", calibration=calibration_file, nsamples=NSAMPLES, seqlen=SEQLEN,
                         drop_blocks=2, mi_rank=8)
    manifest = create_variant(loaded, config).manifest
    windows = calibration_windows(loaded.tokenizer, calibration_file, NSAMPLES, SEQLEN, 0, max_length=loaded.max_length)
    brute = [gaussian_mi(x_in, x_out, rank=8) for x_in, x_out in _block_io(loaded, windows)]
    assert manifest["block_scores"] == pytest.approx(brute, rel=1e-6)
    rounds = manifest["method_notes"]["rounds"]
    assert rounds[0]["dropped"] == max(range(LAYERS), key=lambda index: (brute[index], -index))
    assert sorted(entry["dropped"] for entry in rounds) == manifest["dropped_blocks"]
    assert len(set(manifest["dropped_blocks"])) == 2


def test_random_blocks_is_seeded(isolated_cache):
    loaded = tiny_loaded("llama", layers=6)
    draws = [create_variant(loaded, PruneConfig("random-blocks", drop_blocks=3, block_seed=seed)).manifest
             for seed in (0, 0, 1, 2, 3)]
    assert draws[0]["dropped_blocks"] == draws[1]["dropped_blocks"]  # the same seed, the same blocks
    assert draws[0]["calibration"] == "none"
    assert all(len(set(draw["dropped_blocks"])) == 3 for draw in draws)
    assert len({tuple(draw["dropped_blocks"]) for draw in draws}) > 1  # the seed matters


def test_export_of_a_depth_variant_loads_with_fewer_layers(isolated_cache, tiny_model_dir, calibration_file,
                                                           tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    assert main(["prune", "--model", str(model_dir), "--method", "shortgpt", "--drop-blocks", "1",
                 "--calibration", calibration_file, "--nsamples", "2", "--seqlen", "16"]) == 0
    variant = capsys.readouterr().out.split()[0]
    manifest = read_manifest(variant)
    out = tmp_path / "exported"
    assert main(["export", variant, "--out", str(out)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    dense = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    assert exported.config.num_hidden_layers == dense.config.num_hidden_layers - 1
    assert len(exported.model.layers) == len(dense.model.layers) - 1
    ids = torch.randint(0, dense.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    from backend.models.adapters import adapter_for

    expected = _logits(dropped_model(dense, adapter_for(dense), manifest["dropped_blocks"]), ids)
    torch.testing.assert_close(_logits(exported, ids), expected, atol=1e-5, rtol=0)
    assert main(["export", variant, "--out", str(tmp_path / "ct"), "--format", "compressed-tensors"]) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_speed_times_the_model_without_the_blocks(isolated_cache, family):
    """The timed depth variant stores K blocks' parameters fewer (counted by hand) and computes the variant."""
    from backend.evaluation.speed import SpeedSettings, measure_speed, variant_model

    loaded = tiny_loaded(family, layers=LAYERS)
    manifest = create_variant(loaded, PruneConfig("random-blocks", drop_blocks=2, block_seed=1)).manifest
    result = measure_speed(loaded, manifest["id"], SpeedSettings(batch=2, seqlen=16, repeats=3, warmup=0))
    layers = loaded.adapter.decoder_layers(loaded.model)
    block_parameters = [sum(p.numel() for p in layers[index].parameters()) for index in manifest["dropped_blocks"]]
    dense, variant = result["models"]["dense"], result["models"]["variant"]
    assert dense["parameters"] - variant["parameters"] == sum(block_parameters) > 0
    assert dense["parameters"] == sum(p.numel() for p in loaded.model.parameters())
    assert result["kind"] == "blocks" and f"layers {LAYERS} -> {LAYERS - 2}" in result["expectation"]
    assert len(variant["seconds"]) == 3 and result["speedup"] > 0
    timed = variant_model(loaded, manifest["id"], manifest)
    assert len(loaded.adapter.decoder_layers(timed)) == LAYERS - 2
    ids = torch.randint(0, loaded.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with variant_applied(loaded, manifest["id"]):
        expected = _logits(loaded.model, ids)
    torch.testing.assert_close(_logits(timed, ids), expected, atol=1e-5, rtol=0)


def test_prunelens_speed_on_a_depth_variant(isolated_cache, tiny_model_dir, calibration_file, capsys):
    model_dir = tiny_model_dir("llama")
    assert main(["prune", "--model", str(model_dir), "--method", "shortgpt", "--drop-blocks", "1",
                 "--calibration", calibration_file, "--nsamples", "2", "--seqlen", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    variant = out[0].split()[0]
    assert out[1].startswith("dropped decoder blocks [") and out[1].endswith("-> 1 layers")
    assert main(["speed", variant, "--batch", "1", "--seqlen", "8", "--repeats", "2", "--warmup", "0",
                 "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    dense = AutoModelForCausalLM.from_pretrained(model_dir)
    (dropped,) = read_manifest(variant)["dropped_blocks"]
    removed = sum(p.numel() for p in dense.model.layers[dropped].parameters())
    assert payload["models"]["dense"]["parameters"] - payload["models"]["variant"]["parameters"] == removed
    assert payload["kind"] == "blocks" and payload["speedup"] == payload["models"]["variant"]["speedup"]


@pytest.mark.parametrize("argv,needle", [
    (["--method", "shortgpt", "--drop-blocks", "0"], "drop_blocks"),
    (["--method", "shortgpt", "--drop-blocks", "2"], "at most 1"),
    (["--method", "mi-prun", "--drop-blocks", "5"], "at most 1"),
    (["--method", "random-blocks", "--drop-blocks", "9"], "at most 1"),
    (["--method", "shortgpt", "--sparsity", "0.5"], "--drop-blocks"),
])
def test_depth_bad_input_cli(isolated_cache, tiny_model_dir, capsys, argv, needle):
    assert main(["prune", "--model", str(tiny_model_dir("llama")), "--nsamples", "2", "--seqlen", "16",
                 "--calibration", "lambada", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and needle in errors[0], err
    assert list_variants() == []


def test_depth_bad_input_http(make_client):  # noqa: F811 - pytest fixture
    client = make_client()
    for options in ({"drop_blocks": 2}, {"drop_blocks": 0}):
        refused = client.post("/variants", json={"method": "shortgpt", "calibration": "lambada", "nsamples": 2,
                                                 "seqlen": 16, "options": options})
        assert 400 <= refused.status_code < 500, refused.text
        assert "drop" in refused.json()["detail"]
    refused = client.post("/variants", json={"method": "shortgpt", "calibration": "lambada", "nsamples": 2,
                                             "seqlen": 16, "sparsity": "0.5", "options": {"drop_blocks": 1}})
    assert refused.status_code == 400 and "drop_blocks" in refused.json()["detail"], refused.text


def test_depth_variant_over_http(make_client):  # noqa: F811 - pytest fixture
    """The job runs the request as accepted (no sparsity added to a depth request) and writes the predicted id."""
    client = make_client()
    accepted = client.post("/variants", json={"method": "shortgpt", "calibration": "lambada", "nsamples": 2,
                                              "seqlen": 16, "options": {"drop_blocks": 1}})
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    manifest = client.get(f"/variants/{accepted.json()['variant_id']}").json()
    assert manifest["dropped_blocks"] and len(manifest["dropped_blocks"]) == 1
    assert manifest["layers"]["dense"] - manifest["layers"]["kept"] == 1
