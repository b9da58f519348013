"""Schemathesis against /openapi.json, in-process (ASGI) on a tiny LLaMA: no generated request,
valid or not, may get a 5xx, and every answer must match the documented schema.

Prune and evaluation jobs go through the real worker with fast stand-ins for the engine and
lm-eval (their own tests cover them); NSA requests run the real service on the tiny model.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi

from backend.api.app import create_app
from backend.api.settings import ApiSettings
from backend.evaluation import runner
from backend.pruning import engine
from tests.conftest import tiny_loaded

pytestmark = pytest.mark.integration

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TIME_BUDGET_S = 80.0
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 20, GenerationMode.NEGATIVE: 12}
SLOW_OPERATIONS = {"POST /nsa": 6, "POST /nsa/upload": 6}  # real NSA: fewer examples


def fake_create_variant(loaded, config, *, progress=None):
    progress(0.5, "pretending")
    return engine.VariantResult("wanda-fake", {"achieved_sparsity": {"overall": 0.5}}, reused=True)


def fake_evaluate(loaded, tasks, **_):
    return []


@pytest.mark.parametrize("token", [None, "schemathesis-token"])
def test_no_generated_request_gets_a_server_error(isolated_cache, monkeypatch, token):
    monkeypatch.setattr(engine, "create_variant", fake_create_variant)
    monkeypatch.setattr(runner, "evaluate", fake_evaluate)
    app = create_app(
        ApiSettings(
            **{**isolated_cache.model_dump(), "api_token": token},
            api_wait_seconds=2.0,
            api_job_queue_size=4,
        ),
        loaded=tiny_loaded("llama"),
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=headers)
    started = time.monotonic()
    tested = []
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            label = f"{operation.method.upper()} {operation.path}"
            for mode, examples in EXAMPLES_PER_OPERATION.items():
                if time.monotonic() - started > TIME_BUDGET_S / 2:
                    break

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=SLOW_OPERATIONS.get(label, examples),
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                    derandomize=True,
                )
                def check(case):
                    case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

                try:
                    check()
                except Unsatisfiable:  # nothing to negate: the operation takes no input
                    assert mode is GenerationMode.NEGATIVE
                    continue
                tested.append((label, mode.value))
    finally:
        asgi.shutdown_lifespans()
    assert len({label for label, _ in tested}) >= 15  # every operation was exercised
