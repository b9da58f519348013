"""The API on the real embedded SmolLM2: prune a variant, attribute a real SST-2 sentence against it,
evaluate it on SST-2 with a limit, and read the table — all over HTTP (in-process)."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.data.sources import labelled_examples

pytestmark = pytest.mark.integration


def wait_for_job(client: TestClient, job_id: str, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish")


def test_prune_attribute_and_evaluate_the_embedded_model_over_http(embedded, isolated_cache):
    down = embedded.adapter.decoder_layers(embedded.model)[3].mlp.down_proj.weight
    dense_checksum = down.double().sum().item()
    sentence = labelled_examples("sst2", 1, seed=3)[0]["text"]
    app = create_app(ApiSettings(**isolated_cache.model_dump()), loaded=embedded)
    with TestClient(app) as client:
        accepted = client.post(
            "/variants",
            json={
                "method": "wanda",
                "calibration": "imdb",
                "sparsity": "0.5",
                "nsamples": 8,
                "seqlen": 128,
            },
        )
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(client, accepted.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        variant_id = job["result"]["variant_id"]
        assert variant_id == accepted.json()["variant_id"]
        assert job["result"]["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)

        response = client.post(
            "/nsa", json={"text": sentence, "variants": [variant_id], "top_k": 10}
        )
        assert response.status_code == 200, response.text
        stored = response.json()
        result = stored["result"]
        assert (
            result["model"]["name"] == "smollm2-135m-instruct" and result["model"]["layers"] == 30
        )
        assert len(result["neurons"]) == 10
        assert all(set(neuron["variants"]) == {variant_id} for neuron in result["neurons"])
        source = result["texts"][0]["influential"]["source"]
        assert source in ("model", "user") or source.startswith("fallback:")
        assert client.get(f"/nsa/{stored['id']}").content == response.content
        # Pruning and NSA both swapped weights in and out: the served model is dense again.
        assert down.double().sum().item() == dense_checksum

        accepted = client.post(
            "/evaluations", json={"variant": variant_id, "tasks": ["sst2"], "limit": 8}
        )
        assert accepted.status_code == 202, accepted.text
        job = wait_for_job(client, accepted.json()["job"]["id"])
        assert job["state"] == "succeeded", job
        (row,) = job["result"]["results"]
        assert row["n_examples"] == 8 and 0.0 <= row["metrics"]["acc,none"] <= 1.0
        assert row["metrics"]["acc,none"] * 8 == pytest.approx(
            round(row["metrics"]["acc,none"] * 8)
        )
        listed = client.get("/evaluations", params={"variant": variant_id}).json()
        assert [(r["task"], r["metrics"]["acc,none"]) for r in listed] == [
            ("sst2", row["metrics"]["acc,none"])
        ]
        table = client.get("/tables/task-calibration").json()
        assert table["columns"] == ["imdb"]
        assert table["rows"][0]["values"] == pytest.approx([row["metrics"]["acc,none"]])
    assert down.double().sum().item() == dense_checksum  # and after the evaluation too
