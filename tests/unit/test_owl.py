"""OWL sparsity profile: per-layer ratios equal the paper's formula computed by hand from outlier
ratios recomputed here from the dense model; the model's sparsity averages to the target; bad
requests are refused in one line (CLI exit 2, HTTP 4xx)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from backend.cli import main
from backend.data.windows import calibration_windows
from backend.models.adapters import weight_matrix
from backend.pruning.engine import PruneConfig, create_variant
from backend.pruning.owl import outlier_ratio, owl_sparsities
from backend.pruning.spec import SparsitySpec, per_row_count, pruned_count
from backend.pruning.variants import list_variants
from tests.conftest import FAMILIES, tiny_loaded
from tests.unit.test_api import make_client, wait_for_job  # noqa: F401 - make_client is a fixture

NSAMPLES, SEQLEN = 4, 32


def test_owl_formula_on_numbers():
    # D = [1, 3, 2] %: spread 2λ(D − min)/(max − min) = [0, 0.16, 0.08], mean 0.08.
    sparsities = owl_sparsities([0.01, 0.03, 0.02], [10, 10, 10], target=0.7, lam=0.08)
    assert sparsities == pytest.approx([0.78, 0.62, 0.70], abs=1e-15)
    # Layers of different sizes: the weight-count-weighted mean is the target.
    sizes = [100, 300, 50]
    weighted = owl_sparsities([0.01, 0.03, 0.02], sizes, target=0.6, lam=0.05)
    assert float(np.average(weighted, weights=sizes)) == pytest.approx(0.6, abs=1e-15)
    assert max(weighted) - min(weighted) == pytest.approx(0.1, abs=1e-15)
    assert owl_sparsities([0.02, 0.02], [1, 1], 0.5, 0.08) == [0.5, 0.5]  # nothing to tell apart


def test_outlier_ratio_counts_entries_above_m_times_the_mean():
    scores = [torch.tensor([[1.0, 1.0, 1.0, 9.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])]
    # mean = 17 / 8 = 2.125; above 3 × 2.125 = 6.375: one entry of eight
    assert outlier_ratio(scores, 3.0) == 1 / 8
    assert outlier_ratio(scores, 5.0) == 0.0


def _dense_outlier_ratios(loaded, calibration: str, m: float) -> tuple[list[float], list[int]]:
    """Brute force: every linear's inputs from one full dense forward, then |W|·‖X‖ per layer."""
    windows = calibration_windows(loaded.tokenizer, calibration, NSAMPLES, SEQLEN, 0, max_length=loaded.max_length)
    layers = loaded.adapter.decoder_layers(loaded.model)
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        for module in loaded.adapter.prunable_linears(layer).values():
            handles.append(module.register_forward_pre_hook(
                lambda mod, args: inputs.__setitem__(id(mod), args[0].reshape(-1, args[0].shape[-1]).double())))
    with torch.no_grad():
        loaded.model(input_ids=windows, use_cache=False)
    for handle in handles:
        handle.remove()
    ratios, sizes = [], []
    for layer in layers:
        flat = []
        for module in loaded.adapter.prunable_linears(layer).values():
            norm = inputs[id(module)].pow(2).sum(dim=0).sqrt()  # [in]
            flat.append((weight_matrix(module).double().abs() * norm).reshape(-1))
        everything = torch.cat(flat)
        ratios.append(float((everything > m * everything.mean()).double().mean()))
        sizes.append(everything.numel())
    return ratios, sizes


@pytest.mark.parametrize("family", FAMILIES)
def test_owl_wanda_layer_ratios_follow_the_formula(isolated_cache, calibration_file, family):
    loaded = tiny_loaded(family, layers=4)
    target, m, lam = 0.6, 2.0, 0.1
    config = PruneConfig("wanda", calibration=calibration_file, spec=SparsitySpec.unstructured(target),
                         nsamples=NSAMPLES, seqlen=SEQLEN, sparsity_profile="owl", owl_m=m, owl_lambda=lam)
    manifest = create_variant(loaded, config).manifest
    assert "-owl-" in manifest["id"]
    ratios, sizes = _dense_outlier_ratios(loaded, calibration_file, m)
    recorded = manifest["owl"]
    assert recorded["layer_weights"] == sizes
    # a float difference can move one entry across the threshold, no more
    assert recorded["outlier_ratios"] == pytest.approx(ratios, abs=1.0 / min(sizes))
    assert len(set(recorded["outlier_ratios"])) > 1, "the profile is not trivial on this model"
    by_hand = np.asarray(recorded["outlier_ratios"])
    spread = 2 * lam * (by_hand - by_hand.min()) / (by_hand.max() - by_hand.min())
    expected = target - (spread - np.average(spread, weights=sizes))
    assert recorded["layer_sparsity"] == pytest.approx(expected.tolist(), abs=1e-12)
    assert float(np.average(recorded["layer_sparsity"], weights=sizes)) == pytest.approx(target, abs=1e-12)
    # Each linear is pruned by Wanda's rule at its layer's ratio: int(in · s_l) of every row.
    layers = loaded.adapter.decoder_layers(loaded.model)
    names = {id(module): name for name, module in loaded.model.named_modules()}
    pruned = total = 0
    for index, layer in enumerate(layers):
        for module in loaded.adapter.prunable_linears(layer).values():
            rows, columns = weight_matrix(module).shape
            count = per_row_count(columns, recorded["layer_sparsity"][index])
            assert manifest["achieved_sparsity"]["per_linear"][names[id(module)]] == count / columns
            pruned, total = pruned + rows * count, total + rows * columns
    achieved = manifest["achieved_sparsity"]["overall"]
    assert achieved == pruned / total
    # Wanda truncates int(in · s) per row: within one weight per row of the target, like uniform Wanda.
    smallest = min(weight_matrix(module).shape[1] for layer in layers
                   for module in loaded.adapter.prunable_linears(layer).values())
    assert target - 1.0 / smallest <= achieved <= target + 1e-12, achieved


def test_owl_sparsegpt_overall_sparsity_is_the_target(isolated_cache, calibration_file):
    loaded = tiny_loaded("llama", layers=4)
    target = 0.7
    config = PruneConfig("sparsegpt", calibration=calibration_file, spec=SparsitySpec.unstructured(target),
                         nsamples=NSAMPLES, seqlen=SEQLEN, sparsity_profile="owl", owl_m=2.0, owl_lambda=0.08)
    manifest = create_variant(loaded, config).manifest
    layer_sparsity = manifest["owl"]["layer_sparsity"]
    assert len(set(layer_sparsity)) > 1
    layers = loaded.adapter.decoder_layers(loaded.model)
    counts = [pruned_count(weight_matrix(mod).numel(), layer_sparsity[index])
              for index, layer in enumerate(layers) for mod in loaded.adapter.prunable_linears(layer).values()]
    sizes = [weight_matrix(mod).numel() for layer in layers for mod in loaded.adapter.prunable_linears(layer).values()]
    achieved = manifest["achieved_sparsity"]["overall"]
    assert achieved == sum(counts) / sum(sizes)  # each matrix: round(s_l · numel), exactly
    # Rounding per matrix moves the total by at most half a weight per matrix.
    assert math.isclose(achieved, target, abs_tol=len(sizes) / (2 * sum(sizes)))


@pytest.mark.parametrize("argv,needle", [
    (["--method", "mi", "--neuron-ratio", "0.2", "--sparsity-profile", "owl"], "structured"),
    (["--method", "wanda", "--pattern", "2:4", "--sparsity-profile", "owl"], "N:M"),
    (["--method", "wanda", "--sparsity", "0.9", "--sparsity-profile", "owl"], "owl-lambda"),
    (["--method", "wanda", "--owl-m", "0.5"], "owl_m"),
    (["--method", "shortgpt", "--refine", "dsnot"], "depth"),
])
def test_owl_bad_input_cli(isolated_cache, tiny_model_dir, capsys, argv, needle):
    assert main(["prune", "--model", str(tiny_model_dir("llama")), "--nsamples", "2", *argv]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err[-1] and needle in errors[0], err
    assert list_variants() == []


def test_owl_over_http(make_client):  # noqa: F811 - pytest fixture
    client = make_client()
    described = {method["name"]: method for method in client.get("/methods").json()}
    for name in ("magnitude", "wanda", "sparsegpt", "ria"):
        properties = described[name]["options"]["properties"]
        assert properties["sparsity_profile"]["enum"] == ["uniform", "owl"]
        assert properties["owl_lambda"]["default"] == 0.08 and properties["owl_m"]["default"] == 5.0
    assert "sparsity_profile" not in described["mi"]["options"]["properties"]
    assert described["shortgpt"]["depth"] is True
    for request in ({"method": "wanda", "sparsity": "2:4", "options": {"sparsity_profile": "owl"}},
                    {"method": "mi", "sparsity": "neurons:0.2", "options": {"sparsity_profile": "owl"}}):
        refused = client.post("/variants", json={**request, "calibration": "lambada", "nsamples": 2, "seqlen": 16})
        assert 400 <= refused.status_code < 500, refused.text
        assert "\n" not in refused.json()["detail"]
    accepted = client.post("/variants", json={"method": "magnitude", "sparsity": "0.5", "calibration": "lambada",
                                              "nsamples": 2, "seqlen": 16,
                                              "options": {"sparsity_profile": "owl", "owl_m": 2.0}})
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"], timeout=120)
    assert job["state"] == "succeeded", job
    manifest = client.get(f"/variants/{job['result']['variant_id']}").json()
    assert manifest["calibration"] == "lambada"  # magnitude reads calibration data for OWL's scores
    assert manifest["options"] == {"sparsity_profile": "owl", "owl_m": 2.0}
    assert float(np.average(manifest["owl"]["layer_sparsity"], weights=manifest["owl"]["layer_weights"])) \
        == pytest.approx(0.5, abs=1e-12)
