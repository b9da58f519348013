"""The HTTP API in-process (FastAPI TestClient) on a tiny random LLaMA: every endpoint, bad input,
limits, auth, CORS, busy answers and recovery after a crash."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from backend.api import routes
from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.jobs import JobStore
from backend.pruning.variants import variant_applied, write_variant
from tests.conftest import tiny_loaded

SENTENCE = "The movie was painfully slow, but the acting was beautiful."
SMALL_PRUNE = {
    "method": "wanda",
    "calibration": "lambada",
    "sparsity": "0.5",
    "nsamples": 4,
    "seqlen": 64,
}


@pytest.fixture
def make_client(isolated_cache):
    """A started app (lifespan run) on a fresh tiny LLaMA; settings can be overridden."""
    clients = []

    def make(loaded=None, **overrides) -> TestClient:
        settings = ApiSettings(**{**isolated_cache.model_dump(), **overrides})
        app = create_app(settings, loaded=loaded or tiny_loaded("llama"))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def wait_for_job(client: TestClient, job_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not finish")


def prune(client: TestClient, **changes) -> dict:
    accepted = client.post("/variants", json={**SMALL_PRUNE, **changes})
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded", job
    return {**job, "predicted": accepted.json()["variant_id"]}


def assert_json_error(response, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    for needle in needles:
        assert needle in detail, detail
    return detail


# ----------------------------------------------------------------------------- catalogues


def test_health_and_catalogues(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["default_model"] == "tiny-llama"
    assert health["loaded_models"] == ["tiny-llama"] and health["auth"] is False
    assert health["compute"] == {"busy": False, "holder": None, "waiting": 0}

    models = {row["name"]: row for row in client.get("/models").json()}
    assert models["tiny-llama"]["loaded"] and models["tiny-llama"]["default"]
    assert not models["smollm2-135m-instruct"]["default"]

    from backend.data.sources import list_text_sets
    from backend.evaluation.registry import list_tasks

    names = [row["name"] for row in client.get("/calibration-sets").json()]
    assert names == [row["name"] for row in list_text_sets() if not row["name"].startswith("file:")]
    assert [row["name"] for row in client.get("/tasks").json()] == [
        row["name"] for row in list_tasks()
    ]
    nsa_tasks = {row["name"]: row for row in client.get("/nsa/tasks").json()}
    assert nsa_tasks["sentiment"]["label_words"] == ["positive", "negative"]

    schema = client.get("/openapi.json").json()
    assert {"/variants", "/jobs/{job_id}/events", "/nsa/upload", "/tables/{kind}"} <= set(
        schema["paths"]
    )
    assert client.get("/docs").status_code == 200


# ----------------------------------------------------------------------------- variants and jobs


def test_prune_job_writes_the_variant_and_restores_the_dense_model(make_client):
    loaded = tiny_loaded("llama")
    dense = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    client = make_client(loaded=loaded)
    job = prune(client)
    variant_id = job["result"]["variant_id"]
    assert variant_id == job["predicted"] == job["params"]["variant_id"]
    assert job["progress"] == 1.0 and job["result"]["reused"] is False

    # The model the server holds is dense again, bit for bit.
    assert all(
        torch.equal(dense[name], tensor) for name, tensor in loaded.model.state_dict().items()
    )
    # The variant zeroes exactly half of each prunable linear's weights.
    with variant_applied(loaded, variant_id):
        layer = loaded.adapter.decoder_layers(loaded.model)[0]
        for name, module in loaded.adapter.prunable_linears(layer).items():
            zeros = (module.weight == 0).float().mean().item()
            assert zeros == pytest.approx(0.5, abs=1 / module.weight.shape[1]), name

    listed = client.get("/variants").json()
    assert [row["id"] for row in listed] == [variant_id]
    assert (
        listed[0]["achieved_sparsity"] == pytest.approx(0.5)
        and listed[0]["base_model"] == "tiny-llama"
    )
    manifest = client.get(f"/variants/{variant_id}").json()
    assert manifest["id"] == variant_id and manifest["nsamples"] == 4

    again = prune(client)  # same configuration: reused, not recomputed
    assert again["result"] == {**job["result"], "reused": True}


def test_variant_filters_and_delete(client):
    variant_id = prune(client)["result"]["variant_id"]
    assert [row["id"] for row in client.get("/variants", params={"method": "wanda"}).json()] == [
        variant_id
    ]
    assert client.get("/variants", params={"method": "sparsegpt"}).json() == []
    assert (
        len(client.get("/variants", params={"sparsity": "0.5", "calibration": "lambada"}).json())
        == 1
    )
    assert client.get("/variants", params={"base": "another-model"}).json() == []

    assert client.delete(f"/variants/{variant_id}").json() == {"deleted": variant_id}
    assert client.get("/variants").json() == []
    assert_json_error(client.get(f"/variants/{variant_id}"), 404, variant_id)
    assert_json_error(client.delete(f"/variants/{variant_id}"), 404)


def test_job_progress_streams_as_server_sent_events(client):
    accepted = client.post("/variants", json={**SMALL_PRUNE, "sparsity": "2:4"}).json()
    with client.stream("GET", accepted["events_url"]) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line[len("data: ") :])
            for line in stream.iter_lines()
            if line.startswith("data: ")
        ]
    assert events[-1]["state"] == "succeeded" and events[-1]["progress"] == 1.0
    progress = [event["progress"] for event in events]
    assert progress == sorted(progress)  # never goes backwards
    assert len({(e["state"], e["progress"], e["message"]) for e in events}) == len(
        events
    )  # only changes
    assert client.get("/jobs").json()[0]["id"] == accepted["job"]["id"]
    assert client.get("/jobs", params={"state": "failed"}).json() == []


@pytest.mark.parametrize(
    ("changes", "status", "needle"),
    [
        ({"calibration": "no-such-set"}, 400, "unknown calibration set"),
        ({"calibration": "file:/etc/passwd"}, 400, "not accepted over HTTP"),
        ({"sparsity": "1.5"}, 400, ""),
        ({"sparsity": "4:2"}, 400, "n (kept) must be smaller"),
        ({"method": "mi"}, 400, "neuron-ratio"),
        ({"method": "no-such-method"}, 422, "method"),
        ({"nsamples": 0}, 422, "nsamples"),
        ({"surprise": 1}, 422, "surprise"),
        ({"model": "../../etc"}, 400, "unknown model"),
        ({"model": "/etc"}, 400, "unknown model"),
    ],
)
def test_bad_prune_requests_are_refused_before_a_job_exists(client, changes, status, needle):
    assert_json_error(client.post("/variants", json={**SMALL_PRUNE, **changes}), status, needle)
    assert client.get("/jobs").json() == []


@pytest.mark.parametrize(
    "path",
    [
        "/variants/..",
        "/variants/%2E%2E",
        "/variants/..%2F..%2Fetc",
        "/variants/UPPER",
        "/variants/%2Fetc%2Fpasswd",
        "/jobs/%2E%2E%2Fhealth",
        "/jobs/not-a-job",
        "/nsa/zzzz",
        "/variants/a%00b",
    ],
)
def test_malformed_ids_get_json_4xx(client, path):
    response = client.get(path)
    assert 400 <= response.status_code < 500
    assert isinstance(response.json()["detail"], str)


def test_unknown_ids_are_404(client):
    assert_json_error(client.get("/variants/wanda-unknown"), 404, "unknown variant")
    assert_json_error(client.get("/jobs/" + "0" * 32), 404, "unknown job")
    assert_json_error(client.get("/jobs/" + "0" * 32 + "/events"), 404, "unknown job")
    assert_json_error(client.get("/nsa/" + "0" * 20), 404, "unknown NSA result")


def test_malformed_json_and_oversized_bodies(make_client):
    client = make_client(api_max_body_bytes=2048)
    detail = assert_json_error(
        client.post(
            "/nsa", content=b'{"text": "unterminated', headers={"content-type": "application/json"}
        ),
        422,
    )
    assert detail == "the request body is not valid JSON"
    assert_json_error(client.post("/nsa", json={"text": "x" * 4096}), 413)
    assert_json_error(
        client.post("/variants", content=b"[1, 2]", headers={"content-type": "application/json"}),
        422,
    )


# ----------------------------------------------------------------------------- NSA


def test_nsa_result_is_stored_shared_by_id_and_reused(client, monkeypatch):
    variant_id = prune(client)["result"]["variant_id"]
    calls = []
    real = routes.nsa.run_attribution
    monkeypatch.setattr(
        routes.nsa,
        "run_attribution",
        lambda loaded, request, settings: calls.append(request) or real(loaded, request, settings),
    )

    body = {"text": SENTENCE, "variants": [variant_id], "top_k": 5, "words": ["slow", "beautiful"]}
    first = client.post("/nsa", json=body)
    assert first.status_code == 200, first.text
    stored = first.json()
    assert stored["request"] == {
        "model": "tiny-llama",
        "texts": [SENTENCE],
        "words": ["slow", "beautiful"],
        "task": "sentiment",
        "variants": [variant_id],
        "top_k": 5,
        "ablate": False,
    }
    result = stored["result"]
    assert result["schema_version"] and [v["id"] for v in result["variants"]] == [variant_id]
    assert len(result["neurons"]) == 5
    # Same request again: the stored bytes, without running NSA; and the same bytes by id.
    assert client.post("/nsa", json=body).content == first.content
    assert client.get(f"/nsa/{stored['id']}").content == first.content
    assert len(calls) == 1
    listed = client.get("/nsa").json()
    assert [(row["id"], row["n_texts"], row["variants"]) for row in listed] == [
        (stored["id"], 1, [variant_id])
    ]
    assert listed[0]["preview"] == SENTENCE


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"text": ""}, 422, "text is empty"),
        ({"text": " \n\t "}, 422, "text is empty"),
        ({}, 422, "exactly one of"),
        ({"text": "a", "texts": ["b"]}, 422, "exactly one of"),
        ({"texts": []}, 422, "texts"),
        ({"texts": ["fine", "  "]}, 422, "text 2 is empty"),
        ({"texts": ["x"] * 65}, 422, "texts"),
        ({"text": "fine", "task": "astrology"}, 400, "unknown task"),
        ({"text": "fine", "variants": ["wanda-missing"]}, 404, "unknown variant"),
        ({"text": "fine", "variants": ["../x"]}, 400, "invalid variant id"),
        ({"text": "fine", "top_k": 0}, 422, "top_k"),
        ({"text": "fine", "words": [" "]}, 422, "words"),
        ({"text": "fine", "model": "/etc"}, 400, "unknown model"),
    ],
)
def test_bad_nsa_requests(client, body, status, needle):
    assert_json_error(client.post("/nsa", json=body), status, needle)


def test_nsa_refuses_a_variant_of_another_model(client):
    write_variant(
        "wanda-other-model",
        {"base_model": "another-model", "method": "wanda"},
        masks={"w": torch.zeros(2, 8, dtype=torch.bool)},
    )
    assert_json_error(
        client.post("/nsa", json={"text": SENTENCE, "variants": ["wanda-other-model"]}),
        400,
        "another-model",
    )


def test_jobs_are_cancelled_over_http(client, monkeypatch):
    from backend.pruning import engine

    model = client.app.state.api.pool.default.model
    dense = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    after_first_layer, release = threading.Event(), threading.Event()
    real_propagate = engine.propagate

    def paused(*args, **kwargs):  # the job is mid-prune: layer 1 of 2 pruned, the next not yet
        outputs = real_propagate(*args, **kwargs)
        after_first_layer.set()
        release.wait(10)
        return outputs

    monkeypatch.setattr(engine, "propagate", paused)
    first = client.post("/variants", json=SMALL_PRUNE).json()["job"]["id"]
    assert after_first_layer.wait(10)
    second = client.post("/variants", json={**SMALL_PRUNE, "seed": 7}).json()["job"]["id"]
    queued = client.post(f"/jobs/{second}/cancel")
    assert queued.status_code == 200 and queued.json()["state"] == "cancelled"
    running = client.post(f"/jobs/{first}/cancel")
    assert running.status_code == 200, running.text
    assert running.json()["state"] == "running" and "cancelling" in running.json()["message"]
    release.set()
    ended = wait_for_job(client, first)
    assert (ended["state"], ended["error"]) == ("cancelled", "cancelled by a client")
    assert wait_for_job(client, second)["state"] == "cancelled"  # it never ran
    assert client.get("/variants").json() == []
    assert all(torch.equal(tensor, dense[name]) for name, tensor in model.state_dict().items())
    assert_json_error(client.post(f"/jobs/{first}/cancel"), 409, "already ended")
    assert_json_error(client.post(f"/jobs/{'0' * 32}/cancel"), 404, "unknown job")
    assert client.post("/jobs/..%2F..%2Fetc/cancel").status_code in (404, 422)
    monkeypatch.setattr(engine, "propagate", real_propagate)
    assert prune(client)["state"] == "succeeded"  # the worker goes on


def test_variants_live_in_the_servers_cache_not_the_environments(make_client, isolated_cache, tmp_path):
    # An app built with its own settings keeps its variants there, for pruning and for NSA alike.
    own_cache = tmp_path / "server-cache"
    client = make_client(cache_dir=own_cache)
    variant_id = prune(client)["result"]["variant_id"]
    assert (own_cache / "variants" / variant_id / "manifest.json").is_file()
    assert not (isolated_cache.variants_dir / variant_id).exists()
    body = {"text": SENTENCE, "variants": [variant_id], "top_k": 3, "words": ["slow"]}
    response = client.post("/nsa", json=body)
    assert response.status_code == 200, response.text
    assert [variant["id"] for variant in response.json()["result"]["variants"]] == [variant_id]
    accepted = client.post("/evaluations", json={"variant": variant_id, "tasks": ["sst2"], "limit": 2,
                                                 "num_fewshot": 1})
    assert accepted.status_code == 202, accepted.text
    evaluated = wait_for_job(client, accepted.json()["job"]["id"], timeout=120)
    assert evaluated["state"] == "succeeded", evaluated
    assert (own_cache / "results.db").is_file() and not (isolated_cache.cache_dir / "results.db").exists()
    rows = client.get("/evaluations", params={"variant": variant_id}).json()
    assert [(row["task"], row["n_examples"], row["num_fewshot"]) for row in rows] == [("sst2", 2, 1)]
    assert_json_error(client.post("/evaluations", json={"tasks": ["sst2"], "num_fewshot": 65}), 422, "num_fewshot")


def test_upload_of_each_format_gives_its_texts(client, monkeypatch):
    seen = []
    monkeypatch.setattr(
        routes.nsa,
        "run_attribution",
        lambda loaded, request, _settings: seen.append(request["texts"]) or {"schema_version": "test"},
    )
    files = {
        "reviews.txt": b"First review, quite good.\n\nSecond review:\nawful.\n",
        "reviews.csv": b'id,text\n1,"Good, really."\n2,Bad.\n',
        "reviews.jsonl": b'{"text": "Good."}\n\n{"text": "Bad \\u00e9."}\n',
    }
    for name, content in files.items():
        response = client.post(
            "/nsa/upload", files={"file": (name, content)}, data={"task": "sentiment", "top_k": "3"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["request"]["top_k"] == 3
    assert seen == [
        ["First review, quite good.", "Second review:\nawful."],
        ["Good, really.", "Bad."],
        ["Good.", "Bad \u00e9."],
    ]


@pytest.mark.parametrize(
    ("name", "content", "status", "needles"),
    [
        ("notes.csv", b"id,review\n1,good\n", 400, ("notes.csv", "'text'")),
        ("notes.txt", b"caf\xe9 \xff\xfe bytes", 400, ("notes.txt", "not UTF-8")),
        ("notes.txt", b"  \n\n ", 400, ("notes.txt", "empty")),
        ("notes.jsonl", b'{"text": "ok"}\n{broken\n', 400, ("notes.jsonl", "line 2")),
        ("notes.exe", b"MZ", 400, ("unsupported file type",)),
        ("../../etc/passwd.txt", b"\xff", 400, ("passwd.txt",)),
    ],
)
def test_bad_uploads(client, name, content, status, needles):
    detail = assert_json_error(
        client.post("/nsa/upload", files={"file": (name, content)}), status, *needles
    )
    assert "/tmp" not in detail and "prunelens-upload" not in detail


def test_a_ten_megabyte_upload_is_refused(make_client):
    client = make_client(api_max_upload_bytes=1 << 20)
    response = client.post("/nsa/upload", files={"file": ("big.txt", b"word " * (2 << 20))})
    assert_json_error(response, 413)


def test_upload_with_too_many_texts(client):
    content = "\n\n".join(f"text {i}" for i in range(70)).encode()
    assert_json_error(
        client.post("/nsa/upload", files={"file": ("many.txt", content)}), 400, "at most 64"
    )


# ----------------------------------------------------------------------------- busy


def test_heavy_requests_queue_then_get_429_or_503_while_cached_reads_stay_fast(
    make_client, monkeypatch
):
    client = make_client(api_queue_size=1, api_wait_seconds=0.5)
    stored_id = client.post("/nsa", json={"text": SENTENCE, "top_k": 3}).json()["id"]
    entered, release = threading.Event(), threading.Event()

    def slow(_loaded, _request, _settings):
        entered.set()
        release.wait(10)
        return {"schema_version": "slow"}

    monkeypatch.setattr(routes.nsa, "run_attribution", slow)
    answers = {}

    def send(name, text):
        answers[name] = client.post("/nsa", json={"text": text})

    first = threading.Thread(target=send, args=("holder", "first text"))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=send, args=("waiter", "second text"))
    second.start()
    deadline = time.monotonic() + 5
    while client.get("/health").json()["compute"]["waiting"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)

    refused = client.post("/nsa", json={"text": "third text"})
    assert_json_error(refused, 429, "busy")
    assert int(refused.headers["Retry-After"]) >= 1
    started = time.monotonic()
    assert client.get(f"/nsa/{stored_id}").status_code == 200  # cached reads ignore the lock
    assert client.get("/jobs").status_code == 200 and client.get("/variants").status_code == 200
    assert time.monotonic() - started < 0.5
    second.join(5)
    assert_json_error(answers["waiter"], 503, "busy")
    assert int(answers["waiter"].headers["Retry-After"]) >= 1
    release.set()
    first.join(5)
    assert answers["holder"].status_code == 200


# ----------------------------------------------------------------------------- security and errors


def test_token_is_required_everywhere_but_health(make_client):
    client = make_client(api_token="s3cret-token")
    assert client.get("/health").status_code == 200
    for path in ("/models", "/variants", "/openapi.json", "/docs", "/jobs"):
        assert_json_error(client.get(path), 401, "missing Bearer token")
    assert_json_error(
        client.get("/models", headers={"Authorization": "Bearer wrong"}), 401, "wrong"
    )
    assert_json_error(client.get("/models", headers={"Authorization": "s3cret-token"}), 401)
    assert_json_error(client.post("/nsa", json={"text": "x"}), 401)
    good = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/models", headers=good).status_code == 200
    schema = client.get("/openapi.json", headers=good).json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/health"]["get"]["security"] == []
    assert client.get("/health").json()["auth"] is True


def test_cors_is_off_unless_configured(make_client):
    origin = {"Origin": "http://localhost:8501"}
    plain = make_client()
    assert "access-control-allow-origin" not in plain.get("/health", headers=origin).headers
    allowed = make_client(cors_origins="http://localhost:8501, http://example.org")
    assert (
        allowed.get("/health", headers=origin).headers["access-control-allow-origin"]
        == "http://localhost:8501"
    )
    other = allowed.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_bug_is_a_json_500_without_details(client, monkeypatch, caplog):
    def broken(_loaded, _request, _settings):
        raise KeyError("secret internal name")

    monkeypatch.setattr(routes.nsa, "run_attribution", broken)
    response = client.post("/nsa", json={"text": "fine text"})
    detail = assert_json_error(response, 500, "internal error")
    assert "secret" not in response.text
    assert "secret internal name" in caplog.text  # but the server log has it
    assert detail


def test_restart_marks_the_running_job_interrupted_and_removes_its_partial_variant(
    isolated_cache, make_client
):
    settings = ApiSettings(**isolated_cache.model_dump())
    store = JobStore(settings.jobs_db)
    job = store.create(
        "prune", {**SMALL_PRUNE, "model": "tiny-llama", "variant_id": "wanda-partial"}
    )
    store.mark_running(job.id)
    store.close()
    staging = settings.variants_dir / ".wanda-partial.k3x9"
    staging.mkdir(parents=True)
    (staging / "overlay.safetensors").write_bytes(b"half")
    other_staging = settings.variants_dir / ".wanda-someone-else.abcd"
    other_staging.mkdir()

    client = make_client()
    after = client.get(f"/jobs/{job.id}").json()
    assert after["state"] == "interrupted" and "stopped" in after["error"]
    assert not staging.exists() and other_staging.exists()  # only this job's leftovers go
    assert client.get("/variants").json() == []
    assert prune(client)["state"] == "succeeded"  # and the next job runs


# ----------------------------------------------------------------------------- evaluations


def test_evaluation_job_and_stored_results(client, monkeypatch):
    from backend.evaluation import runner
    from backend.evaluation.store import DENSE, ResultKey

    variant_id = prune(client)["result"]["variant_id"]
    store = routes.evaluations.results_store(client.app.state.api)
    calls = []

    def fake_evaluate(
        loaded, tasks, *, variant_id=None, limit=None, store=None, progress=None, **_
    ):
        calls.append((loaded.name, tasks, variant_id, limit))
        progress(0.5, "evaluating sst2 (1/1)")
        key = ResultKey(loaded.name, variant_id or DENSE, tasks[0], limit, "packaged", "test")
        stored = store.put(
            key, n_examples=limit, metrics={"acc,none": 0.75, "acc_stderr,none": 0.1}
        )
        return [runner.TaskResult(tasks[0], stored, reused=False)]

    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    accepted = client.post(
        "/evaluations", json={"variant": variant_id, "tasks": ["sst2"], "limit": 8}
    )
    assert accepted.status_code == 202, accepted.text
    job = wait_for_job(client, accepted.json()["job"]["id"])
    assert job["state"] == "succeeded" and calls == [("tiny-llama", ["sst2"], variant_id, 8)]
    assert job["result"]["results"][0]["metrics"]["acc,none"] == 0.75

    store.put(
        ResultKey("tiny-llama", DENSE, "rte", None, "packaged", "test"),
        n_examples=277,
        metrics={"acc,none": 0.5},
    )
    assert {row["task"] for row in client.get("/evaluations").json()} == {"sst2", "rte"}
    dense = client.get("/evaluations", params={"variant": "dense"}).json()
    assert [(row["task"], row["variant_id"]) for row in dense] == [("rte", None)]
    assert [
        row["task"] for row in client.get("/evaluations", params={"variant": variant_id}).json()
    ] == ["sst2"]
    assert client.get("/evaluations", params={"task": "boolq"}).json() == []

    assert_json_error(
        client.post("/evaluations", json={"tasks": ["no-such-task"]}), 400, "unknown task"
    )
    assert_json_error(
        client.post("/evaluations", json={"tasks": ["sst2"], "variant": "wanda-nope"}), 404
    )
    assert_json_error(client.post("/evaluations", json={"tasks": []}), 422, "tasks")


def test_tables_average_stored_results_per_cell(client):
    from backend.evaluation.store import DENSE, ResultKey

    store = routes.evaluations.results_store(client.app.state.api)
    for variant_id, method, accuracy in (
        ("wanda-a", "wanda", 0.6),
        ("sparsegpt-b", "sparsegpt", 0.8),
    ):
        store.record_variant(
            {
                "id": variant_id,
                "base_model": "tiny-llama",
                "method": method,
                "calibration": "lambada",
                "sparsity": "0.5",
                "seqlen": 64,
                "nsamples": 4,
                "seed": 0,
            }
        )
        store.put(
            ResultKey("tiny-llama", variant_id, "sst2", 40, "packaged", "test"),
            n_examples=40,
            metrics={"acc,none": accuracy},
        )
    store.put(
        ResultKey("tiny-llama", DENSE, "sst2", 40, "packaged", "test"),
        n_examples=40,
        metrics={"acc,none": 0.9},
    )

    table = client.get("/tables/task-calibration").json()
    assert table["columns"] == ["dense", "lambada"] and table["row_header"] == "task"
    assert [row["label"] for row in table["rows"]] == ["sst2"]
    assert table["rows"][0]["values"] == pytest.approx([0.9, (0.6 + 0.8) / 2])
    assert table["rows"][0]["counts"] == [1, 2]
    wanda_only = client.get("/tables/task-calibration", params={"method": "wanda"}).json()
    assert wanda_only["rows"][0]["values"] == pytest.approx([0.6])
    assert_json_error(client.get("/tables/model-calibration"), 400, "one task")
    assert client.get("/tables/no-such-kind").status_code == 422


def test_a_chunked_body_over_the_limit_is_refused_while_read(make_client):
    client = make_client(api_max_body_bytes=4096)
    chunks = (
        b'{"text": "' + b"x" * 1024 for _ in range(8)
    )  # no Content-Length: counted as it arrives
    response = client.post("/nsa", content=chunks, headers={"content-type": "application/json"})
    assert_json_error(response, 413, "4096")


# ----------------------------------------------------------------------------- prunelens serve


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.20", False),
        ("::", False),
        ("example.org", False),
    ],
)
def test_loopback_detection(host, loopback):
    from backend.api.commands import is_loopback

    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_host_without_a_token(monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.delenv("PRUNELENS_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", "8765"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "PRUNELENS_API_TOKEN" in error and "0.0.0.0" in error


def test_serve_accepts_a_public_host_with_a_token():
    from backend.api.commands import check_bind

    check_bind("0.0.0.0", "a-token")  # no error
    check_bind("127.0.0.1", None)


def test_a_default_model_that_cannot_load_leaves_a_working_server(isolated_cache, tmp_path):
    missing = str(tmp_path / "no-model-here")
    settings = ApiSettings(**{**isolated_cache.model_dump(), "default_model": missing})
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        health = client.get("/health").json()
        assert health["status"] == "no_model" and health["loaded_models"] == []
        assert "unknown model" in health["error"] and health["default_model"] == missing
        assert client.get("/variants").json() == []
        assert_json_error(client.post("/nsa", json={"text": SENTENCE}), 400, "unknown model")


def test_samples_are_real_labelled_examples_and_bad_sets_are_4xx(client):
    from backend.data.sources import labelled_examples

    answer = client.get("/samples", params={"dataset": "sst2", "n": 3, "seed": 7})
    assert answer.status_code == 200
    assert answer.json() == labelled_examples("sst2", 3, 7)
    assert client.get("/samples", params={"dataset": "sst2", "n": 3, "seed": 7}).json() == answer.json()
    refused = client.get("/samples", params={"dataset": "c4"})
    assert refused.status_code == 400 and "sst2" in refused.json()["detail"]
    assert client.get("/samples", params={"dataset": "../x"}).status_code == 422
    assert client.get("/samples", params={"dataset": "sst2", "n": 0}).status_code == 422
