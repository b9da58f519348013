"""NSA over HTTP: results are keyed by the NSA code version, per-text words and the split switch."""

from __future__ import annotations

import json

from backend.api import routes
from backend.nsa import results_store as nsa_results
from tests.unit.test_api import SENTENCE, client, make_client  # noqa: F401  (fixtures)

TEXTS = [
    SENTENCE,
    "A delightful, warm and funny film that never drags.",
    "Dull, clumsy and far too long.",
    "A quiet, moving and honest story.",
]
TEXT_WORDS = [["slow", "beautiful"], ["delightful", "funny"], ["Dull", "clumsy"], ["moving", "honest"]]


def _count_runs(monkeypatch) -> list[dict]:
    calls = []
    real = routes.nsa.run_attribution
    monkeypatch.setattr(routes.nsa, "run_attribution",
                        lambda loaded, request, settings: calls.append(request) or real(loaded, request, settings))
    return calls


def test_a_result_from_other_nsa_code_is_not_served_as_current(client, monkeypatch):  # noqa: F811
    calls = _count_runs(monkeypatch)
    body = {"text": SENTENCE, "top_k": 3, "words": ["slow"]}
    current = nsa_results.nsa_code_version()
    monkeypatch.setattr(nsa_results, "nsa_code_version", lambda: "0123456789abcdef")
    old = client.post("/nsa", json=body).json()
    assert old["code_version"] == "0123456789abcdef" and len(calls) == 1
    monkeypatch.setattr(nsa_results, "nsa_code_version", lambda: current)
    new = client.post("/nsa", json=body).json()
    assert new["id"] != old["id"] and len(calls) == 2  # recomputed, not the stored one
    assert new["code_version"] == current and not new.get("stale", False)
    assert client.get(f"/nsa/{old['id']}").json()["stale"] is True
    assert client.get(f"/nsa/{new['id']}").json().get("stale", False) is False


def test_code_version_follows_the_nsa_source():
    version = nsa_results.nsa_code_version()
    assert len(version) == 16 and int(version, 16) >= 0
    assert nsa_results.request_id({"a": 1}) != nsa_results.request_id({"a": 2})


def test_per_text_words_and_split_over_json_and_upload(client, monkeypatch):  # noqa: F811
    calls = _count_runs(monkeypatch)
    response = client.post("/nsa", json={"texts": TEXTS, "text_words": TEXT_WORDS, "top_k": 3, "split": False})
    assert response.status_code == 200, response.text
    stored = response.json()
    assert stored["request"]["words"] == TEXT_WORDS and stored["request"]["split"] is False
    texts = stored["result"]["texts"]
    assert [[w["word"] for w in t["influential"]["words"]] for t in texts] == TEXT_WORDS
    assert stored["result"]["settings"]["split"] is False

    jsonl = "".join(json.dumps({"text": t, "words": w}) + "\n" for t, w in zip(TEXTS, TEXT_WORDS, strict=True))
    response = client.post("/nsa/upload", files={"file": ("texts.jsonl", jsonl.encode())}, data={"top_k": "3"})
    assert response.status_code == 200, response.text
    assert calls[-1]["words"] == TEXT_WORDS and "split" not in calls[-1]
    assert response.json()["result"]["settings"]["split"] is True  # the default: cross-fitted

    bad = client.post("/nsa", json={"texts": TEXTS, "text_words": TEXT_WORDS[:2]})
    assert bad.status_code == 422 and "one list per text" in bad.text
