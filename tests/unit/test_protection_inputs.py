"""Protection from the command line and over HTTP: a stored NSA result protects its neurons; bad input
(unknown result, ratio outside (0, 0.5], another model's result, a structured method) is one line,
exit 2 / 4xx, and nothing is written."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.settings import ApiSettings, api_settings
from backend.cli import main
from backend.config import get_settings
from backend.evaluation.store import ResultsStore
from backend.guided.protect_experiment import KIND
from backend.models.loader import load_model
from backend.nsa.results_store import NsaResultStore, request_id
from backend.nsa.service import attribute
from tests.conftest import TINY_CORPUS, tiny_loaded
from tests.unit.test_api import wait_for_job

UNKNOWN = "0123456789abcdef0123"


def _store_nsa_result(loaded, top_k: int = 6) -> tuple[str, dict]:
    """A real NSA result (steps 1-2, given words) on ``loaded``, stored as the API stores one."""
    request = {"model": loaded.name, "texts": TINY_CORPUS[:2], "words": ["slow", "warm"], "top_k": top_k}
    result = attribute(loaded, TINY_CORPUS[:2], words=["slow", "warm"], top_k=top_k, split=False,
                       null_draws=0, resamples=0, word_check=False)
    result_id = request_id(request)
    store = NsaResultStore(api_settings(get_settings()).nsa_db)
    store.put(result_id, request, result)
    store.close()
    return result_id, result


def _variants_written() -> list:
    root = get_settings().variants_dir
    return sorted(root.iterdir()) if root.is_dir() else []


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PRUNE = ("prune", "--method", "wanda", "--calibration", "lambada", "--nsamples", "2", "--seqlen", "32")


def test_cli_protects_the_neurons_of_a_stored_result(isolated_cache, tiny_model_dir, capsys):
    path = str(tiny_model_dir("llama"))
    result_id, result = _store_nsa_result(load_model(path))
    code, out, err = _cli(capsys, *PRUNE, "--model", path, "--protect", f"{result_id}:4", "--json")
    assert code == 0, err
    manifest = json.loads(out)
    protection = manifest["protection"]
    best = sorted(result["neurons"], key=lambda neuron: neuron["rank"])[:4]
    expected: dict[str, list[int]] = {}
    for neuron in best:
        expected.setdefault(str(neuron["layer"]), []).append(neuron["index"])
    assert protection["neuron_indices"] == {layer: sorted(indices) for layer, indices in sorted(expected.items())}
    assert protection["count"] == 4 and protection["source"]["result_id"] == result_id
    assert protection["protected_weights_pruned"] == 0


@pytest.mark.parametrize("arguments,needle", [
    (("--protect", UNKNOWN), "unknown NSA result"),
    (("--protect-task", "sst2", "--protect-ratio", "0.7"), "(0, 0.5]"),
    (("--protect-task", "sst2", "--protect-ratio", "0"), "(0, 0.5]"),
    (("--protect-ratio", "0.1"), "needs --protect-task"),
    (("--protect", "abc", "--protect-task", "sst2"), "not both"),
    (("--protect", "abc:x"), "TOP_K"),
    (("--protect", UNKNOWN, "--protect-mode", "upweight", "--protect-factor", "0.5"), "factor"),
])
def test_cli_bad_protection_is_one_line(isolated_cache, tiny_model_dir, capsys, arguments, needle):
    path = str(tiny_model_dir("llama"))
    code, out, err = _cli(capsys, *PRUNE, "--model", path, *arguments)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert _variants_written() == []


def test_cli_refuses_another_models_result(isolated_cache, tiny_model_dir, capsys):
    result_id, _ = _store_nsa_result(tiny_loaded("llama"))  # computed on "tiny-llama"
    path = str(tiny_model_dir("llama"))
    code, _, err = _cli(capsys, *PRUNE, "--model", path, "--protect", result_id)
    assert code == 2 and "computed on 'tiny-llama'" in err and err.count("\n") == 1
    assert _variants_written() == []


def test_cli_refuses_protection_with_a_structured_method(isolated_cache, tiny_model_dir, capsys):
    path = str(tiny_model_dir("llama"))
    code, _, err = _cli(capsys, "prune", "--method", "flap", "--neuron-ratio", "0.2", "--calibration", "lambada",
                        "--model", path, "--protect", UNKNOWN)
    assert code == 2 and "does not take protected neurons" in err
    assert _variants_written() == []


# ----------------------------------------------------------------------------- HTTP


SMALL = {"method": "wanda", "calibration": "lambada", "sparsity": "0.5", "nsamples": 2, "seqlen": 32}


@pytest.fixture
def client(isolated_cache):
    loaded = tiny_loaded("llama")
    app = create_app(ApiSettings(**isolated_cache.model_dump()), loaded=loaded)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        test_client.loaded = loaded  # type: ignore[attr-defined]
        yield test_client


def test_api_prunes_with_protection(client):
    result_id, _ = _store_nsa_result(client.loaded)
    accepted = client.post("/variants", json={**SMALL, "protect": f"{result_id}:3"})
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"], timeout=60)
    assert job["state"] == "succeeded", job
    manifest = client.get(f"/variants/{job['result']['variant_id']}").json()
    assert manifest["protection"]["count"] == 3 and manifest["protection"]["protected_weights_pruned"] == 0
    assert accepted.json()["variant_id"] == job["result"]["variant_id"]  # predicted before the job ran
    methods = {method["name"]: method["protects"] for method in client.get("/methods").json()}
    assert methods["wanda"] and not methods["flap"]


@pytest.mark.parametrize("fields,status,needle", [
    ({"protect": UNKNOWN}, 404, "unknown NSA result"),
    ({"protect_task": "sst2", "protect_ratio": 0.7}, 422, "protect_ratio"),
    ({"protect_task": "sst2", "protect_ratio": 0}, 422, "protect_ratio"),
    ({"protect_ratio": 0.1}, 400, "needs --protect-task"),
    ({"protect": "not-an-id"}, 422, "protect"),
    ({"method": "flap", "sparsity": "neurons:0.2", "protect": UNKNOWN}, 400, "does not take protected"),
])
def test_api_bad_protection_is_refused_before_any_job(client, fields, status, needle):
    response = client.post("/variants", json={**SMALL, **fields})
    assert response.status_code == status, response.text
    assert needle in response.text
    assert client.get("/jobs").json() == [] or all(job["kind"] != "prune" for job in client.get("/jobs").json())
    assert _variants_written() == []


def test_api_refuses_another_models_result(client, tiny_model_dir):
    result_id, _ = _store_nsa_result(load_model(str(tiny_model_dir("llama"))))
    response = client.post("/variants", json={**SMALL, "protect": result_id})
    assert response.status_code == 400 and "computed on" in response.json()["detail"]
    assert _variants_written() == []


def test_api_serves_stored_experiments(client):
    assert client.get("/experiments/protect").json() == []
    missing = client.get("/experiments/protect/protect-sst2-0123456789ab")
    assert missing.status_code == 404
    document = {"id": "protect-sst2-0123456789ab", "status": "done", "spec": {"model": "tiny-llama"},
                "created_at": "2026-01-01T00:00:00+00:00", "rows": []}
    ResultsStore.from_settings().put_experiment(KIND, document["id"], "done", document)
    listed = client.get("/experiments/protect").json()
    assert [row["id"] for row in listed] == [document["id"]]
    assert client.get(f"/experiments/protect/{document['id']}").json() == document
    assert client.get("/experiments/protect/..%2Fetc").status_code in (404, 422)
