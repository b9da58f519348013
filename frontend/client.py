"""The dashboard's only HTTP code: a small typed client for the PruneLens backend API.

Where the backend lives comes from ``BACKEND_URL`` (default http://127.0.0.1:8000) and, when
the backend is bound publicly, the Bearer token from ``PRUNELENS_API_TOKEN``. Every failure
becomes one of two exceptions with a message fit to show as it is: ``BackendUnavailable``
(nothing answers at that address) or ``BackendError`` (the backend answered with an error).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

DEFAULT_BACKEND_URL = "http://127.0.0.1:8000"
# Reads answer from caches in milliseconds; NSA and uploads may run the model for a while on CPU.
READ_TIMEOUT_S = 30.0
COMPUTE_TIMEOUT_S = 600.0


class BackendError(Exception):
    """The backend answered with an error; ``str(exc)`` is its message."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BackendUnavailable(BackendError):
    """Nothing answered at the backend's address (not started, wrong URL, network down)."""


def error_message(payload: Any, status: int) -> str:
    """One readable line from an error body: ``{"detail": "..."}`` or FastAPI's validation list."""
    detail = payload.get("detail", payload.get("message")) if isinstance(payload, Mapping) else payload
    if isinstance(detail, list):  # FastAPI validation errors: [{"loc": [...], "msg": "..."}]
        parts = []
        for item in detail:
            if isinstance(item, Mapping):
                where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query", "path"))
                parts.append(f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", "")))
            else:
                parts.append(str(item))
        detail = "; ".join(parts)
    if not detail:
        detail = f"HTTP {status}"
    return " ".join(str(detail).split())


class BackendClient:
    """Calls the backend's endpoints and returns their JSON bodies as plain dicts and lists.

    ``http`` may be any ``httpx.Client`` (tests pass FastAPI's ``TestClient``, which is one, so
    the dashboard is tested against the real app in-process).
    """

    def __init__(self, base_url: str | None = None, token: str | None = None, *,
                 http: httpx.Client | None = None):
        self.base_url = (base_url or os.environ.get("BACKEND_URL") or DEFAULT_BACKEND_URL).rstrip("/")
        token = token if token is not None else os.environ.get("PRUNELENS_API_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if http is None:
            http = httpx.Client(base_url=self.base_url, headers=headers, timeout=READ_TIMEOUT_S)
        else:
            http.headers.update(headers)
        self._http = http

    # ------------------------------------------------------------------ transport

    def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs) -> Any:
        """``timeout``: seconds for slow calls; None keeps the client's default (reads)."""
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            seconds = timeout if timeout is not None else READ_TIMEOUT_S
            raise BackendError(f"the backend did not answer {method} {path} within {seconds:.0f} s") from exc
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"cannot reach the backend at {self.base_url} ({exc.__class__.__name__}); "
                "start it with `prunelens serve` or set BACKEND_URL"
            ) from exc
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        try:
            payload = response.json() if response.content else None
        except ValueError:
            payload = response.text[:300]
        if response.status_code >= 400:
            retry_after = response.headers.get("retry-after")
            message = error_message(payload, response.status_code)
            if response.status_code == 401:
                message = f"{message} (set PRUNELENS_API_TOKEN to the backend's token)"
            raise BackendError(
                message, response.status_code,
                float(retry_after) if retry_after and retry_after.replace(".", "", 1).isdigit() else None,
            )
        return payload

    @staticmethod
    def _params(filters: Mapping[str, Any]) -> dict:
        return {key: value for key, value in filters.items() if value not in (None, "", [])}

    # ------------------------------------------------------------------ reads

    def health(self) -> dict:
        return self._request("GET", "/health", timeout=5.0)

    def models(self) -> list[dict]:
        return self._request("GET", "/models")

    def calibration_sets(self) -> list[dict]:
        return self._request("GET", "/calibration-sets")

    def tasks(self) -> list[dict]:
        return self._request("GET", "/tasks")

    def variants(self, **filters) -> list[dict]:
        """Manifests of pruned variants; filters: base, method, calibration, sparsity."""
        return self._request("GET", "/variants", params=self._params(filters))

    def variant(self, variant_id: str) -> dict:
        return self._request("GET", f"/variants/{_segment(variant_id)}")

    def jobs(self, **filters) -> list[dict]:
        """Recent jobs, newest first; filters: kind, state, limit."""
        return self._request("GET", "/jobs", params=self._params(filters))

    def job(self, job_id: str) -> dict:
        return self._request("GET", f"/jobs/{_segment(job_id)}")

    def job_events(self, job_id: str, timeout: float = COMPUTE_TIMEOUT_S) -> Iterator[dict]:
        """The job's progress as it happens (server-sent events), until the job ends."""
        path = f"/jobs/{_segment(job_id)}/events"
        try:
            with self._http.stream("GET", path, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._decode(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise BackendUnavailable(f"lost the backend at {self.base_url} ({exc.__class__.__name__})") from exc

    def nsa_tasks(self) -> list[dict]:
        """The NSA task types (sentiment, question answering, …) with their label words."""
        return self._request("GET", "/nsa/tasks")

    def nsa_options(self) -> dict:
        """JSON schema of NSA's options (defaults, bounds, help)."""
        return self._request("GET", "/nsa/options")

    def methods(self) -> list[dict]:
        """The registered pruning methods, each with the JSON schema of its options."""
        return self._request("GET", "/methods")

    def request_schema(self, name: str) -> dict:
        """The JSON schema of one of the API's request bodies (e.g. PruneRequest), from its OpenAPI document."""
        return self._request("GET", "/openapi.json")["components"]["schemas"].get(name, {})

    def nsa_result(self, result_id: str) -> dict:
        return self._request("GET", f"/nsa/{_segment(result_id)}")

    def nsa_results(self, model: str | None = None, limit: int = 100) -> list[dict]:
        """Summaries of the stored NSA results, newest first (id, model, preview, variants)."""
        return self._request("GET", "/nsa", params=self._params({"model": model, "limit": limit}))

    def evaluations(self, **filters) -> list[dict]:
        """Stored lm-eval results; filters: base_model, variant ('dense' or an id), task."""
        return self._request("GET", "/evaluations", params=self._params(filters))

    def speeds(self) -> list[dict]:
        """Every current speed measurement (``prunelens speed`` / POST /variants/{id}/speed)."""
        return self._request("GET", "/speed")

    def compare(self, base_model: str, variant: str, metric: str = "acc,none") -> list[dict]:
        """A variant against the dense model per task: intervals and the paired difference."""
        return self._request("GET", "/evaluations/compare",
                             params={"base_model": base_model, "variant": variant, "metric": metric})

    def calibration_advice(self, task: str, model: str | None = None) -> dict:
        """Calibration sets ranked for ``task`` by the proxy, with its validation (404: none stored)."""
        return self._request("GET", "/calibration-advice", params=self._params({"task": task, "model": model}))

    def protect_experiments(self) -> list[dict]:
        """Stored protected-neurons experiments (id, status, spec), newest first."""
        return self._request("GET", "/experiments/protect")

    def protect_experiment(self, experiment_id: str) -> dict:
        """One protected-neurons experiment: spec, protected neurons, table rows."""
        return self._request("GET", f"/experiments/protect/{_segment(experiment_id)}")

    def table(self, kind: str, **params) -> dict:
        return self._request("GET", f"/tables/{_segment(kind)}", params=self._params(params))

    def samples(self, dataset: str, n: int = 10, seed: int = 0) -> list[dict]:
        """Labelled dataset examples ``{"text", "label", "label_text"}`` to attribute."""
        try:
            return self._request("GET", "/samples", params={"dataset": dataset, "n": n, "seed": seed})
        except BackendError as exc:
            if exc.status == 404 and str(exc) == "Not Found":  # the route itself, not the dataset
                raise BackendError("this backend does not serve dataset samples (GET /samples); "
                                   "use Attribute your text instead", 404) from exc
            raise

    # ------------------------------------------------------------------ neuron index

    def indexes(self, model: str | None = None) -> list[dict]:
        """The finished neuron indexes (id, model, variants, corpus, tokens, created, stale)."""
        return self._request("GET", "/indexes", params=self._params({"model": model}))

    def index(self, index_id: str) -> dict:
        """One index's manifest."""
        return self._request("GET", f"/indexes/{_segment(index_id)}")

    def neuron(self, model: str, layer: int, neuron: int, *, variant: str | None = None,
               index: str | None = None) -> dict:
        """A neuron's page: top examples, density histogram, dense-vs-variant figures."""
        return self._request("GET", f"/neurons/{_model_path(model)}/{int(layer)}/{int(neuron)}",
                             params=self._params({"variant": variant, "index": index}))

    def neuron_logits(self, model: str, layer: int, neuron: int, variant: str | None = None, k: int = 10) -> dict:
        """Tokens the neuron promotes and suppresses, dense and under the variant."""
        return self._request("GET", f"/neurons/{_model_path(model)}/{int(layer)}/{int(neuron)}/logits",
                             params=self._params({"variant": variant, "k": k}), timeout=COMPUTE_TIMEOUT_S)

    def neuron_nsa(self, model: str, layer: int, neuron: int) -> list[dict]:
        """Stored NSA results that selected the neuron."""
        return self._request("GET", f"/neurons/{_model_path(model)}/{int(layer)}/{int(neuron)}/nsa")

    def neuron_test(self, model: str, layer: int, neuron: int, text: str, variant: str | None = None) -> dict:
        """The neuron's activation on each token of a text, dense and under the variant."""
        return self._request("POST", f"/neurons/{_model_path(model)}/{int(layer)}/{int(neuron)}/test",
                             json={"text": text, "variant": variant}, timeout=COMPUTE_TIMEOUT_S)

    def changed_neurons(self, index_id: str, variant: str, **filters) -> list[dict]:
        """Neurons ranked by change; filters: layer, order, limit, include_noise."""
        return self._request("GET", f"/indexes/{_segment(index_id)}/changed",
                             params=self._params({"variant": variant, **filters}))

    def divergence(self, index_id: str, variant: str, limit: int = 50) -> dict:
        """Where the variant's next-token distribution diverges most (per-token KL)."""
        return self._request("GET", f"/indexes/{_segment(index_id)}/divergence",
                             params={"variant": variant, "limit": limit})

    def search_neurons(self, index_id: str, token: str, variant: str | None = None, limit: int = 50) -> list[dict]:
        """Neurons whose top examples fire on ``token``."""
        return self._request("GET", f"/indexes/{_segment(index_id)}/search",
                             params=self._params({"token": token, "variant": variant, "limit": limit}))

    # ------------------------------------------------------------------ writes

    def create_index(self, request: Mapping[str, Any]) -> dict:
        """Start a neuron index build (POST /index/jobs); returns the job."""
        return self._request("POST", "/index/jobs", json=dict(request))

    def resume_index(self, job_id: str) -> dict:
        """Submit a stopped index build again; it continues from its checkpoints."""
        return self._request("POST", f"/index/jobs/{_segment(job_id)}/resume")


    def create_variant(self, request: Mapping[str, Any]) -> dict:
        """Start a prune job; returns the job (its ``id`` and state)."""
        return self._request("POST", "/variants", json=dict(request))

    def delete_variant(self, variant_id: str) -> Any:
        return self._request("DELETE", f"/variants/{_segment(variant_id)}")

    def cancel_job(self, job_id: str) -> dict:
        """Cancel a queued job now, or a running one at its next step; returns the job."""
        return self._request("POST", f"/jobs/{_segment(job_id)}/cancel")

    def create_evaluation(self, request: Mapping[str, Any]) -> dict:
        return self._request("POST", "/evaluations", json=dict(request))

    def nsa(self, request: Mapping[str, Any]) -> dict:
        """Run NSA on text(s) now (the backend queues it behind running jobs)."""
        return self._request("POST", "/nsa", json=dict(request), timeout=COMPUTE_TIMEOUT_S)

    def nsa_job(self, request: Mapping[str, Any]) -> dict:
        """Start NSA over many texts or a labelled dataset as a job; returns the job."""
        return self._request("POST", "/nsa/jobs", json=dict(request))

    def nsa_upload(self, filename: str, content: bytes, fields: Mapping[str, Any] | None = None) -> dict:
        """Run NSA over the texts of a .txt, .csv or .jsonl file."""
        form = {key: (",".join(map(str, value)) if isinstance(value, list | tuple) else str(value))
                for key, value in (fields or {}).items() if value not in (None, "", [])}
        return self._request("POST", "/nsa/upload", files={"file": (filename, content)}, data=form,
                             timeout=COMPUTE_TIMEOUT_S)


def _segment(value: str) -> str:
    """A path segment, percent-encoded so an id can never change the route it is sent to."""
    from urllib.parse import quote

    return quote(str(value), safe="")


def _model_path(model: str) -> str:
    """A model name in a path: hub ids keep their one slash (``facebook/opt-125m``); everything
    else is percent-encoded."""
    from urllib.parse import quote

    return "/".join(quote(part, safe="") for part in str(model).split("/"))


def parse_sse(lines) -> Iterator[dict]:
    """Decode a server-sent-events stream into the JSON objects of its ``data:`` fields."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                text = "\n".join(data)
                data = []
                try:
                    yield json.loads(text)
                except ValueError:
                    yield {"message": text}
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        try:
            yield json.loads("\n".join(data))
        except ValueError:
            yield {"message": "\n".join(data)}
