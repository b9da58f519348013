"""Calibration advice on a tiny LLaMA: the proxy's input norms equal a full forward's, mask agreement
equals a brute-force count, the validation's accuracies are the stored ones and its correlation is
scipy's; bad input is one line (exit 2 / 4xx) and writes nothing."""

from __future__ import annotations

import math

import pytest
import torch
from fastapi.testclient import TestClient
from scipy import stats

from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.cli import main
from backend.data.windows import calibration_windows
from backend.evaluation.store import ResultsStore
from backend.guided.advice import (
    AdviceSettings,
    calibration_advice,
    chosen_layers,
    input_norms,
    mask_agreement,
    save_advice,
    spearman_with_exact_p,
)
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from tests.conftest import tiny_loaded

SETS = ["lambada", "rte", "sst2"]


def test_input_norms_equal_a_full_forward():
    loaded = tiny_loaded("llama", seed=4)
    windows = calibration_windows(loaded.tokenizer, "lambada", 3, 16, 0)  # [3, 16]
    layers = loaded.adapter.decoder_layers(loaded.model)
    recorded: dict[str, torch.Tensor] = {}

    def recorder(name):
        def record(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()  # [tokens, in]
            recorded[name] = torch.cat([recorded[name], x]) if name in recorded else x
        return record

    handles = [module.register_forward_pre_hook(recorder(f"0.{name}"))
               for name, module in loaded.adapter.prunable_linears(layers[0]).items()]
    with torch.no_grad():
        loaded.model(input_ids=windows, use_cache=False)
    for handle in handles:
        handle.remove()
    norms = input_norms(loaded, windows, [0])
    assert set(norms) == set(recorded)
    for name, x in recorded.items():
        assert torch.allclose(norms[name].double(), x.pow(2).sum(dim=0).sqrt(), rtol=1e-5)
    assert chosen_layers(30) == [3, 10, 18, 25] and chosen_layers(2) == [0, 1]


def test_mask_agreement_is_the_share_of_the_reference_mask_pruned_too():
    torch.manual_seed(0)
    weights = {"a": torch.randn(8, 12), "b": torch.randn(6, 12)}
    reference = {name: torch.rand(12) + 0.1 for name in weights}
    other = {name: torch.rand(12) + 0.1 for name in weights}
    spec = SparsitySpec.parse("0.5")
    assert mask_agreement(weights, reference, reference, spec) == 1.0
    shares = []
    for name, weight in weights.items():
        mine, theirs = wanda_mask(weight, other[name], spec), wanda_mask(weight, reference[name], spec)
        shared = sum(bool(mine[i, j] and theirs[i, j]) for i in range(weight.shape[0]) for j in range(12))
        shares.append(shared / int(theirs.sum()))
    assert mask_agreement(weights, other, reference, spec) == pytest.approx(sum(shares) / 2)


def test_spearman_is_scipys_with_an_exact_permutation_p_value():
    found = spearman_with_exact_p([0.1, 0.2, 0.3, 0.4, 0.5], [0.50, 0.52, 0.55, 0.60, 0.61])
    assert found["rho"] == pytest.approx(1.0) and found["p_value"] == pytest.approx(2 / math.factorial(5))
    scores, accuracies = [0.3, 0.1, 0.4, 0.2, 0.6, 0.5], [0.55, 0.60, 0.52, 0.58, 0.57, 0.50]
    assert spearman_with_exact_p(scores, accuracies)["rho"] == pytest.approx(
        stats.spearmanr(scores, accuracies).statistic)
    assert spearman_with_exact_p([1, 2, 3], [0.5, 0.5, 0.5])["rho"] is None  # nothing to correlate


def test_validated_advice_on_a_tiny_model(isolated_cache, monkeypatch):
    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    loaded = tiny_loaded("llama", seed=6)
    settings = AdviceSettings("sst2", "sst2", "0.5", nsamples=2, seqlen=32, seed=0)
    advice = calibration_advice(loaded, settings, SETS, validate=True, limit=6)
    ranking = advice["ranking"]
    assert [row["rank"] for row in ranking] == [1, 2, 3]
    assert [row["score"] for row in ranking] == sorted((row["score"] for row in ranking), reverse=True)
    assert all(0.0 <= row["score"] <= 1.0 for row in ranking)
    store = ResultsStore.from_settings()
    for row in ranking:  # the accuracies shown are the stored evaluations of Wanda variants
        [stored] = store.results(variant_id=row["variant_id"], task="sst2")
        assert stored.metric() == row["accuracy"] and stored.n_examples == 6
        assert stored.variant["calibration"] == row["calibration"] and stored.variant["method"] == "wanda"
    expected = spearman_with_exact_p([r["score"] for r in ranking], [r["accuracy"] for r in ranking])
    assert advice["validation"]["all_sets"] == expected
    assert advice["validation"]["without_task_set"]["n"] == 2
    assert advice["reading"].startswith(("Spearman", "The measured accuracies"))

    save_advice(advice, isolated_cache)
    app = create_app(ApiSettings(**isolated_cache.model_dump()), loaded=loaded)
    with TestClient(app, raise_server_exceptions=False) as client:
        served = client.get("/calibration-advice", params={"task": "sst2"})
        assert served.status_code == 200 and served.json()["ranking"] == ranking
        missing = client.get("/calibration-advice", params={"task": "rte"})
        assert missing.status_code == 404 and "prunelens calibration-advice" in missing.json()["detail"]
        assert client.get("/calibration-advice", params={"task": "no_such_task"}).status_code == 400


@pytest.mark.parametrize("arguments, needle", [
    (["--task", "no_such_task"], "unknown task"),
    (["--task", "sst2", "--sets", "lambada,nope,rte"], "unknown text set"),
    (["--task", "sst2", "--sets", "lambada,rte"], "at least 3"),
    (["--task", "sst2", "--sparsity", "2:4"], "unstructured"),
    (["--task", "sst2", "--nsamples", "0"], "nsamples"),
    (["--task", "yelp"], "--task-text"),
])
def test_bad_input_is_one_line_and_writes_nothing(isolated_cache, capsys, arguments, needle):
    assert main(["calibration-advice", *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert needle in error and len(error.splitlines()) == 1
    assert not (isolated_cache.cache_dir / "advice").exists()
