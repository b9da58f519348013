"""POST /nsa/jobs on a tiny LLaMA over HTTP: progress, the causal check's result, cancel, restart, bad input;
and the CLI's one-line errors for dataset-level runs."""

from __future__ import annotations

import threading

import pytest

from backend.api.settings import ApiSettings
from backend.cli import main
from backend.jobs import JobStore
from tests.unit import test_api
from tests.unit.test_api import assert_json_error, prune, wait_for_job

make_client = test_api.make_client  # the app fixture, shared with the other API tests

TEXTS = [
    "The film was painfully slow and dull.",
    "A delightful, warm and funny film.",
    "The film never drags; the acting is beautiful.",
    "A boring film with a predictable plot.",
    "The film was warm, funny and beautiful.",
    "The film was slow, dull and far too long.",
]
LABELS = ["negative", "positive", "positive", "negative", "positive", "negative"]


def _body(**changes) -> dict:
    return {"texts": TEXTS, "labels": LABELS, "words": ["film", "slow", "warm", "dull", "funny"],
            "top_k": 4, "ablate": True, "patch": True, **changes}


def test_nsa_job_reports_progress_and_stores_the_verdict(make_client):
    client = make_client()
    variant = prune(client)["result"]["variant_id"]
    accepted = client.post("/nsa/jobs", json=_body(variants=[variant]))
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job"]["id"]
    assert accepted.json()["job"]["kind"] == "nsa"
    with client.stream("GET", f"/jobs/{job_id}/events") as events:
        messages = [line for line in events.iter_lines() if line.startswith("data:")]
    job = wait_for_job(client, job_id)
    assert job["state"] == "succeeded", job
    assert len(messages) >= 3 and '"succeeded"' in messages[-1]
    stored = client.get(f"/nsa/{job['result']['result_id']}")
    assert stored.status_code == 200
    causal = stored.json()["result"]["causal"]
    assert sorted(causal["folds"][0]["test_examples"] + causal["folds"][1]["test_examples"]) == list(range(6))
    patching = causal["patching"][0]
    assert patching["variant"] == variant and patching["examples"] == 6
    assert len(patching["null_draw_recovery"]) in (0, 20)
    assert patching["accuracy"]["dense"]["value"] == pytest.approx(
        sum(e["dense_margin"] > 0 for e in causal["examples"]) / 6)
    assert causal["ablation"]["reading"].startswith("Zeroing these 4 neurons")
    # The same request again is answered from the store.
    again = wait_for_job(client, client.post("/nsa/jobs", json=_body(variants=[variant])).json()["job"]["id"])
    assert again["result"] == {"result_id": job["result"]["result_id"], "reused": True}
    # Both features in one result: the held-out statistics use the causal check's folds.
    result = stored.json()["result"]
    assert sorted(sorted(fold) for fold in result["statistics"]["folds"]) == sorted(
        fold["test_examples"] for fold in causal["folds"])
    assert result["comparison"][0]["statistics"]["held_out"]["excess_drop"]["n"] == 6
    # split: false is another request (another result): in-sample figures only, the causal
    # check (cross-fitted by construction) still there.
    in_sample = wait_for_job(client, client.post("/nsa/jobs", json=_body(variants=[variant], split=False))
                             .json()["job"]["id"])
    assert in_sample["result"]["result_id"] != job["result"]["result_id"]
    other = client.get(f"/nsa/{in_sample['result']['result_id']}").json()["result"]
    assert other["comparison"][0]["statistics"]["held_out"] is None and other["causal"]["patching"]


def test_cancelling_an_nsa_job_mid_run_stores_nothing(make_client, monkeypatch):
    from backend.nsa import causal

    client = make_client()
    variant = prune(client)["result"]["variant_id"]
    inside, release = threading.Event(), threading.Event()
    real = causal.patched_log_probs

    def paused(*args, **kwargs):
        inside.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(causal, "patched_log_probs", paused)
    job_id = client.post("/nsa/jobs", json=_body(variants=[variant])).json()["job"]["id"]
    assert inside.wait(120), client.get(f"/jobs/{job_id}").json()
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    release.set()
    ended = wait_for_job(client, job_id)
    assert (ended["state"], ended["result"]) == ("cancelled", None)
    assert client.get("/nsa").json() == []


def test_restart_marks_a_running_nsa_job_interrupted(isolated_cache, make_client):
    settings = ApiSettings(**isolated_cache.model_dump())
    store = JobStore(settings.jobs_db)
    job = store.create("nsa", {"request": {"texts": TEXTS}})
    store.mark_running(job.id)
    store.close()
    client = make_client()
    after = client.get(f"/jobs/{job.id}").json()
    assert after["state"] == "interrupted" and "stopped" in after["error"]
    assert client.get("/nsa").json() == []


@pytest.mark.parametrize(("changes", "status", "needle"), [
    ({"labels": None, "variants": ["x"]}, 400, "patching needs"),
    ({"variants": []}, 400, "needs at least one variant"),
    ({"texts": None, "labels": None, "dataset": "nope", "n": 5, "patch": False}, 404, "unknown text set"),
    ({"texts": None, "labels": None, "dataset": "sst2", "n": 0}, 422, "n"),
    ({"dataset": "sst2"}, 422, "either texts or dataset"),
    ({"labels": ["positive"]}, 422, "one label per text"),
])
def test_bad_nsa_job_requests_are_refused_before_a_job_exists(make_client, changes, status, needle):
    client = make_client()
    response = client.post("/nsa/jobs", json=_body(**changes))
    assert response.status_code == status, response.text
    if status != 422:
        assert_json_error(response, status, needle)
    else:
        assert needle in response.text
    assert client.get("/jobs", params={"kind": "nsa"}).json() == []


def test_cli_dataset_level_errors_are_one_line(tiny_model_dir, capsys):
    model_dir = str(tiny_model_dir("llama"))
    bad = [
        ["--text", TEXTS[0], "--patch"],  # no variants
        ["--dataset", "nope", "--n", "5"],
        ["--dataset", "sst2", "--n", "0"],
    ]
    capsys.readouterr()
    for extra in bad:
        assert main(["attribute", "--model", model_dir, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:"), err
