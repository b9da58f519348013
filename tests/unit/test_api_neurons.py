"""The neuron index over HTTP on a tiny random LLaMA: POST /index/jobs builds a real (small) index,
neuron pages, change rankings, divergence and search serve it, logit effects and text tests equal a
hand computation, bad input is a 4xx, and a SIGKILLed build is "interrupted", never served, and
resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.config import get_settings
from backend.pruning.variants import write_variant
from tests.conftest import REPO_ROOT, tiny_loaded

SMALL_INDEX = {"tokens": 2000, "max_length": 64, "top_k": 5, "context": 3}


def wait_for(get, job_id: str, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def save_tiny(cache: Path) -> str:
    """The tiny LLaMA as a converted model of the cache: the server lists it, and loads it by name."""
    target = cache / "models" / "tiny-llama"
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(target, safe_serialization=True)
    loaded.tokenizer.save_pretrained(target)
    return str(target.resolve())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A started app whose default model is the tiny LLaMA, one Wanda variant and one index."""
    cache = tmp_path_factory.mktemp("neuron-api")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELENS_CACHE_DIR", str(cache))
        patch.delenv("PRUNELENS_API_TOKEN", raising=False)
        get_settings.cache_clear()
        model = save_tiny(cache)
        settings = ApiSettings(cache_dir=cache, default_model=model, device="cpu")
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            accepted = client.post("/variants", json={"method": "wanda", "calibration": "lambada",
                                                      "sparsity": "0.5", "nsamples": 4, "seqlen": 32})
            job = wait_for(client.get, accepted.json()["job"]["id"])
            assert job["state"] == "succeeded", job
            variant = job["result"]["variant_id"]
            accepted = client.post("/index/jobs", json={**SMALL_INDEX, "variants": [variant]})
            assert accepted.status_code == 202, accepted.text
            assert accepted.json()["job"]["kind"] == "index"
            job = wait_for(client.get, accepted.json()["job"]["id"])
            assert job["state"] == "succeeded" and job["progress"] == 1.0, job
            yield {"client": client, "model": model, "variant": variant, "index": job["result"]["index_id"],
                   "cache": cache, "settings": settings}
        get_settings.cache_clear()


def path(served, layer: int, neuron: int, tail: str = "") -> str:
    return f"/neurons/{served['model']}/{layer}/{neuron}{tail}"


def test_the_index_is_listed_and_its_pages_are_the_backends_answers(served):
    from backend.neurons.queries import neuron_page

    client, index = served["client"], served["index"]
    listed = client.get("/indexes").json()
    assert [row["id"] for row in listed] == [index]
    assert listed[0]["model"] == served["model"] and listed[0]["variants"] == [served["variant"]]
    assert listed[0]["stale"] is False and listed[0]["tokens"] >= SMALL_INDEX["tokens"]
    assert client.get("/indexes", params={"model": "other"}).json() == []
    assert client.get(f"/indexes/{index}").json()["model"] == served["model"]

    page = client.get(path(served, 1, 3), params={"variant": served["variant"], "index": index}).json()
    assert page == neuron_page(index, 1, 3, variant=served["variant"], settings=served["settings"])
    # Without `index`: the newest index of the model that holds the variant; the dense page alone too.
    assert client.get(path(served, 1, 3), params={"variant": served["variant"]}).json() == page
    dense_only = client.get(path(served, 1, 3)).json()
    assert dense_only["variant"] is None and dense_only["dense"] == page["dense"]

    dense = page["dense"]
    assert sum(dense["histogram"]) == dense["stats"]["count"] == listed[0]["tokens"]
    assert len(page["histogram_edges"]) == len(dense["histogram"])  # lower edges; the last bin is open
    tops = [example["activation"] for example in dense["top_positive"]]
    assert tops == sorted(tops, reverse=True) and tops[0] == pytest.approx(dense["stats"]["max"])
    for example in dense["top_positive"] + dense["top_negative"]:  # windows are stored as float16 for display
        assert example["activations"][example["focus"]] == pytest.approx(example["activation"], rel=1e-3, abs=1e-4)
    rereads = page["variant"]["dense_top_reread"]
    bottoms = [example["activation"] for example in dense["top_negative"]]
    assert sorted(r["dense_activation"] for r in rereads) == pytest.approx(sorted(tops + bottoms))


def _cold_pages(served, neurons) -> dict[tuple, bytes]:
    answers = {}
    for layer, neuron in neurons:
        for params in ({"variant": served["variant"], "index": served["index"]}, {"index": served["index"]}):
            response = served["client"].get(path(served, layer, neuron), params=params)
            assert response.status_code == 200, response.text
            answers[(layer, neuron, params.get("variant"))] = response.content
    return answers


def test_pages_from_the_workers_are_the_bytes_of_the_in_process_path(served):
    """Pages built by the page worker processes equal, byte for byte, what the server's own
    thread pool gives (PRUNELENS_API_PAGE_PROCESSES=0) and the page function in-process."""
    from backend.api.neuron_reads import json_bytes
    from backend.neurons.queries import neuron_page

    state = served["client"].app.state.api
    neurons = [(0, 0), (0, 7), (1, 63), (1, 2)]
    state.cache.pop("neuron_pages", None)
    from_workers = _cold_pages(served, neurons)
    assert state.pages is not None and len(state.pages._workers) == state.settings.api_page_processes
    assert all(worker.process.is_alive() for worker in state.pages._workers)
    pages, state.pages = state.pages, None
    try:
        state.cache.pop("neuron_pages", None)
        assert _cold_pages(served, neurons) == from_workers
    finally:
        state.pages = pages
    for (layer, neuron, variant), body in from_workers.items():
        assert body == json_bytes(neuron_page(served["index"], layer, neuron, variant=variant,
                                              settings=served["settings"]))


def test_a_killed_page_worker_is_replaced_and_pages_stay_the_same(served):
    state = served["client"].app.state.api
    served["client"].get(path(served, 0, 1), params={"index": served["index"]}).raise_for_status()
    killed = [worker.process for worker in state.pages._workers]
    for process in killed:
        process.kill()
        process.join(10)
    state.cache.pop("neuron_pages", None)
    deadline = time.monotonic() + 120
    while True:  # a page asked of a dying worker is a 500 (the client may retry); then new workers serve
        response = served["client"].get(path(served, 1, 5), params={"index": served["index"]})
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert response.status_code == 500, response.text
    assert response.status_code == 200, response.text
    fresh = [worker.process for worker in state.pages._workers]
    assert len(fresh) == len(killed) and not {p.pid for p in fresh} & {p.pid for p in killed}
    from backend.api.neuron_reads import json_bytes
    from backend.neurons.queries import neuron_page

    assert response.content == json_bytes(neuron_page(served["index"], 1, 5, settings=served["settings"]))


def test_concurrent_first_requests_share_one_build_that_a_cancelled_client_does_not_stop():
    import asyncio

    from backend.api.neuron_reads import AnswerCache

    builds = []

    async def scenario() -> list[bytes]:
        cache = AnswerCache(entries=2)
        release = asyncio.Event()

        async def build() -> bytes:
            builds.append(1)
            await release.wait()
            return b"page"

        gone = asyncio.ensure_future(cache.get_or_build(("k",), build))
        waiting = [asyncio.ensure_future(cache.get_or_build(("k",), build)) for _ in range(5)]
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        release.set()
        answers = await asyncio.gather(*waiting)
        assert gone.cancelled() and cache.get(("k",)) == b"page"
        return [*answers, await cache.get_or_build(("k",), build)]

    assert asyncio.run(scenario()) == [b"page"] * 6
    assert len(builds) == 1


def test_changed_divergence_and_search(served):
    client, index, variant = served["client"], served["index"], served["variant"]
    rows = client.get(f"/indexes/{index}/changed", params={"variant": variant, "limit": 500}).json()
    assert len(rows) == 2 * 64  # every neuron of the two layers
    pearsons = [row["pearson"] for row in rows if row["pearson"] is not None]
    assert pearsons == sorted(pearsons)  # lowest correlation first
    for row in rows:
        inside = (row["profile_correlation"] >= row["profile_correlation_floor"]
                  and row["token_overlap"] >= row["token_overlap_floor"])
        assert row["not_distinguishable"] == inside
    layer1 = client.get(f"/indexes/{index}/changed",
                        params={"variant": variant, "layer": 1, "order": "mass_lost", "limit": 10}).json()
    assert len(layer1) == 10 and {row["layer"] for row in layer1} == {1}
    lost = [row["mass_lost"] for row in layer1]
    assert lost == sorted(lost, reverse=True)

    report = client.get(f"/indexes/{index}/divergence", params={"variant": variant, "limit": 5}).json()
    kls = [context["kl"] for context in report["top"]]
    assert len(kls) == 5 and kls == sorted(kls, reverse=True) and report["mean_kl"] <= kls[0]
    means = [row["mean_kl"] for row in report["tokens"]]
    assert means == sorted(means, reverse=True)

    page = client.get(path(served, 0, 5), params={"index": index}).json()
    top = page["dense"]["top_positive"][0]
    token = top["tokens"][top["focus"]].strip()
    if token:
        hits = client.get(f"/indexes/{index}/search", params={"token": token}).json()
        assert any((hit["layer"], hit["neuron"]) == (0, 5) for hit in hits)


def test_logit_effects_and_text_test_equal_a_hand_computation(served):
    from backend.models.loader import load_model

    client, variant = served["client"], served["variant"]
    loaded = load_model(served["model"], device="cpu", settings=served["settings"])
    layer, neuron = 1, 7
    model = loaded.model.model
    column = model.layers[layer].mlp.down_proj.weight[:, neuron]  # [hidden]
    expected = loaded.model.lm_head.weight @ (model.norm.weight * column)  # [vocab]
    answer = client.get(path(served, layer, neuron, "/logits"), params={"k": 5, "variant": variant}).json()
    promoted = torch.topk(expected, 5)
    assert [row["value"] for row in answer["dense"]["promoted"]] == pytest.approx(promoted.values.tolist(), rel=1e-4)
    assert [row["token"] for row in answer["dense"]["promoted"]] == \
        [loaded.tokenizer.decode([i]) for i in promoted.indices.tolist()]
    assert answer["variant"] is not None and answer["variant_id"] == variant

    text = "The movie was painfully slow."
    captured = {}

    def keep(_module, args):  # [1, tokens, neurons] -> this neuron's activation per token
        captured["a"] = args[0][0, :, neuron].tolist()

    hook = model.layers[layer].mlp.down_proj.register_forward_pre_hook(keep)
    try:
        # NSA's encoding: the start token in front.
        from backend.data.encoding import encode_for_attribution

        with torch.no_grad():
            loaded.model(torch.tensor([encode_for_attribution(loaded.tokenizer, text, 256).input_ids]))
    finally:
        hook.remove()
    captured["a"] = captured["a"][1:]  # the start token is never shown
    tested = client.post(path(served, layer, neuron, "/test"), json={"text": text}).json()
    assert tested["dense"] == pytest.approx(captured["a"], abs=1e-5) and tested["variant"] is None
    with_variant = client.post(path(served, layer, neuron, "/test"), json={"text": text, "variant": variant}).json()
    assert with_variant["dense"] == pytest.approx(tested["dense"])
    assert len(with_variant["variant"]) == len(tested["tokens"]) and with_variant["variant"] != tested["dense"]


def test_nsa_results_that_selected_a_neuron(served):
    client = served["client"]
    envelope = client.post("/nsa", json={"text": "A slow but beautiful film.", "words": ["slow", "beautiful"],
                                         "top_k": 4}).json()
    top = min(envelope["result"]["neurons"], key=lambda n: n["rank"])
    found = client.get(path(served, top["layer"], top["index"], "/nsa")).json()
    assert [(row["result"], row["rank"]) for row in found] == [(envelope["id"], top["rank"])]
    unselected = {(n["layer"], n["index"]) for n in envelope["result"]["neurons"]}
    free = next((0, j) for j in range(64) if (0, j) not in unselected)
    assert client.get(path(served, *free, "/nsa")).json() == []


@pytest.mark.parametrize("url, params, status, needle", [
    ("/indexes/nope", {}, 404, "unknown index"),
    ("/neurons/{model}/0/1", {"index": "nope"}, 404, "unknown index"),
    ("/neurons/{model}/9/1", {}, 400, "layer 9"),
    ("/neurons/{model}/0/640", {}, 400, "neuron 640"),
    ("/neurons/{model}/0/640/logits", {}, 400, "neuron 640"),
    ("/neurons/{model}/0/1", {"variant": "not-in-it"}, 404, "no index"),
    ("/indexes/{index}/changed", {"variant": "not-in-it"}, 404, "holds no variant"),
    ("/neurons/{model}/9/1/logits", {}, 400, "layer 9"),
    ("/neurons/other-model/0/1", {}, 404, "no index of model"),
])
def test_bad_reads_are_4xx_with_a_message(served, url, params, status, needle):
    response = served["client"].get(url.format(model=served["model"], index=served["index"]), params=params)
    assert response.status_code == status, response.text
    assert needle in response.json()["detail"]


def test_bad_index_requests_are_refused_before_a_job_exists(served):
    client, cache = served["client"], served["cache"]
    write_variant("other-base", {"base_model": "smollm2-135m-instruct", "method": "none", "calibration": None,
                                 "sparsity": "0", "achieved_sparsity": {"overall": 0.0, "per_linear": {}}},
                  masks={}, settings=served["settings"])
    (cache / "corpora").mkdir(exist_ok=True)
    (cache / "corpora" / "empty.txt").write_text("  \n\n", encoding="utf-8")
    (cache / "corpora" / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 50)
    jobs_before = len(client.get("/jobs").json())
    for body, status, needle in [
        ({"variants": ["other-base"]}, 400, "pruned from"),
        ({"variants": ["no-such-variant"]}, 404, "no-such-variant"),
        ({"corpus": "file:missing.txt"}, 404, "missing.txt"),
        ({"corpus": "file:../jobs.db"}, 400, "corpora/"),
        ({"corpus": "file:empty.txt"}, 400, "empty.txt"),
        ({"corpus": "file:binary.txt"}, 400, "binary.txt"),
        ({"tokens": 10}, 422, "tokens"),
        ({"model": "../etc"}, 400, "unknown model"),
    ]:
        response = client.post("/index/jobs", json={**SMALL_INDEX, **body})
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["detail"], (body, response.json())
    assert len(client.get("/jobs").json()) == jobs_before
    assert client.post("/index/jobs/" + "0" * 32 + "/resume").status_code == 404


# ----------------------------------------------------------------------------- a killed build


def _serve(cache: Path, model: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PRUNELENS_CACHE_DIR": str(cache), "PRUNELENS_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("PRUNELENS_API_TOKEN", None)
    return subprocess.Popen([sys.executable, "-m", "backend.cli", "serve", "--model", model, "--port", str(port)],
                            env=env, cwd=REPO_ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.TransportError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_sigkilled_build_is_interrupted_never_served_and_resumes(tmp_path):
    from frontend.demo import free_port

    cache = tmp_path / "cache"
    model = save_tiny(cache)
    port = free_port(0)
    base = f"http://127.0.0.1:{port}"
    server = _serve(cache, model, port, tmp_path / "server.log")
    try:
        _until(lambda: httpx.get(f"{base}/health").json()["status"] == "ok", 120, "the server")
        body = {**SMALL_INDEX, "tokens": 60_000, "max_length": 128}
        job_id = httpx.post(f"{base}/index/jobs", json=body).json()["job"]["id"]
        _until(lambda: (job := httpx.get(f"{base}/jobs/{job_id}").json())["state"] == "running"
               and job["progress"] > 0.05, 180, "the build to be under way")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)

        server = _serve(cache, model, port, tmp_path / "server.log")
        _until(lambda: httpx.get(f"{base}/health").json()["status"] == "ok", 120, "the restarted server")
        job = httpx.get(f"{base}/jobs/{job_id}").json()
        assert job["state"] == "interrupted" and "stopped" in job["error"]
        assert httpx.get(f"{base}/indexes").json() == []  # nothing half-built is listed
        assert httpx.get(f"{base}/neurons/{model}/0/0").status_code == 404  # nor served

        resumed = httpx.post(f"{base}/index/jobs/{job_id}/resume").json()["job"]
        assert resumed["params"]["resumes"] == job_id
        done = wait_for(lambda url: httpx.get(base + url), resumed["id"], timeout=600)
        assert done["state"] == "succeeded", done
        listed = httpx.get(f"{base}/indexes").json()
        assert [row["id"] for row in listed] == [done["result"]["index_id"]]
        assert httpx.get(f"{base}/neurons/{model}/0/0").json()["dense"]["stats"]["count"] == listed[0]["tokens"]
        assert httpx.post(f"{base}/index/jobs/{resumed['id']}/resume").status_code == 409  # it succeeded
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(20)


def test_answers_are_compact_json_with_nan_as_null_and_the_same_values_as_the_json_module():
    import json
    import math

    from backend.api.neuron_reads import json_bytes

    answer = {"a": [0.1234, 1e-05, 0.30000000000000004, -3.67562198638916, 2**53 + 1], "b": "ünï \"q\"",
              "c": {"nan": math.nan, "inf": -math.inf, "nested": [[math.nan, 1.5]]}, "d": None, "e": True}
    body = json_bytes(answer)
    assert b", " not in body and b": " not in body and "ünï".encode() in body  # compact, UTF-8 text
    parsed = json.loads(body)
    assert parsed["c"] == {"nan": None, "inf": None, "nested": [[None, 1.5]]}
    assert parsed == json.loads(json.dumps({**answer, "c": parsed["c"]}))  # every float survives exactly
    assert json.loads(json_bytes({1: [2**70]})) == {"1": [2**70]}  # beyond orjson: the json module writes it
