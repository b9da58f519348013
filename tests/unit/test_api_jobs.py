"""The API's machinery without HTTP: persisted jobs, the compute gate, the model pool."""

from __future__ import annotations

import threading
import time

import pytest

from backend.api.compute import ComputeGate
from backend.api.model_pool import ModelPool, model_bytes
from backend.api.settings import ApiSettings
from backend.errors import ConflictError, NotFoundError, UserError
from backend.jobs import (
    CANCELLED,
    FAILED,
    INTERRUPTED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    BusyError,
    JobStore,
    JobWorker,
)
from tests.conftest import tiny_loaded


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def store(tmp_path):
    job_store = JobStore(tmp_path / "jobs.db")
    yield job_store
    job_store.close()


# ----------------------------------------------------------------------------- jobs


def test_job_reports_progress_while_running_and_its_result_after(store):
    reached, release = threading.Event(), threading.Event()

    def run(job, progress):
        progress(-0.5, "below zero is clamped")
        reached.set()
        release.wait(5)
        progress(0.75, "three quarters")
        return {"answer": job.params["x"] * 2}

    worker = JobWorker(store)
    worker.register("double", run)
    worker.start()
    try:
        job = worker.submit("double", {"x": 21})
        assert job.state == QUEUED and store.get(job.id).params == {"x": 21}
        assert reached.wait(5)
        running = store.get(job.id)
        assert (running.state, running.progress, running.message) == (
            RUNNING,
            0.0,
            "below zero is clamped",
        )
        assert running.started_at is not None and running.finished_at is None
        release.set()
        done = wait_for(lambda: (j := store.get(job.id)).finished and j)
    finally:
        worker.stop()
    assert done.state == SUCCEEDED and done.progress == 1.0
    assert done.result == {"answer": 42} and done.error is None
    assert done.created_at <= done.started_at <= done.finished_at


def test_failures_are_one_line_messages(store):
    def user_mistake(_job, _progress):
        raise UserError("calibration set 'x' is unknown")

    def bug(_job, _progress):
        raise RuntimeError("index out of range\n  at line 3")

    worker = JobWorker(store)
    worker.register("mistake", user_mistake)
    worker.register("bug", bug)
    worker.start()
    try:
        first, second = worker.submit("mistake", {}), worker.submit("bug", {})
        wait_for(lambda: store.get(second.id).finished)
    finally:
        worker.stop()
    assert store.get(first.id).state == FAILED
    assert store.get(first.id).error == "calibration set 'x' is unknown"
    failed = store.get(second.id)
    assert failed.state == FAILED and "\n" not in failed.error
    assert failed.error == "internal error: RuntimeError: index out of range at line 3"


def test_cancel_drops_a_queued_job_and_stops_a_running_one_at_its_next_step(store):
    started, steps, ran = threading.Event(), [], []

    def long_job(_job, progress):
        started.set()
        for step in range(500):  # would take 5 s: stopped at a progress step instead
            progress(step / 500, f"step {step}")
            steps.append(step)
            time.sleep(0.01)
        return {"finished": True}

    worker = JobWorker(store)
    worker.register("long", long_job)
    worker.register("other", lambda _job, _progress: ran.append(1) or {})
    worker.start()
    try:
        running, waiting = worker.submit("long", {}), worker.submit("other", {})
        assert started.wait(5)
        cancelled = worker.cancel(waiting.id)  # still queued: cancelled at once
        assert cancelled.state == CANCELLED and cancelled.finished_at is not None
        asked = worker.cancel(running.id)
        assert asked.state == RUNNING and "cancelling" in asked.message
        stopped = wait_for(lambda: (j := store.get(running.id)).finished and j)
        after = len(steps)
        time.sleep(0.1)
        assert len(steps) == after < 500  # the job's loop really stopped
        follow_up = worker.submit("other", {})
        wait_for(lambda: store.get(follow_up.id).finished)  # the worker goes on with new jobs
    finally:
        worker.stop()
    assert (stopped.state, stopped.result, stopped.error) == (CANCELLED, None, "cancelled by a client")
    assert store.get(waiting.id).state == CANCELLED and ran == [1]  # only the follow-up ran
    with pytest.raises(ConflictError, match="already ended"):
        worker.cancel(running.id)
    with pytest.raises(NotFoundError):
        worker.cancel("0" * 32)


def test_the_job_queue_is_bounded(store):
    worker = JobWorker(store, queue_size=2)  # not started: nothing leaves the queue
    worker.register("noop", lambda _job, _progress: {})
    worker.submit("noop", {})
    worker.submit("noop", {})
    with pytest.raises(BusyError) as refused:
        worker.submit("noop", {})
    assert refused.value.status_code == 429 and refused.value.retry_after >= 1
    assert [job.state for job in store.list()] == [QUEUED, QUEUED]  # the refused one left no row
    worker.cancel(store.list()[0].id)  # a cancelled job frees its place at once
    worker.submit("noop", {})
    with pytest.raises(UserError):
        worker.submit("unknown-kind", {})


def test_restart_marks_unfinished_jobs_interrupted_and_cleans_up(tmp_path):
    first = JobStore(tmp_path / "jobs.db")
    running = first.create("prune", {"variant_id": "wanda-x"})
    first.mark_running(running.id)
    first.set_progress(running.id, 0.4, "layer 2/5")
    queued = first.create("prune", {"variant_id": "wanda-y"})
    finished = first.create("prune", {})
    first.finish(finished.id, SUCCEEDED, message="done", result={"variant_id": "z"})
    first.close()  # the process died here

    cleaned = []
    second = JobStore(tmp_path / "jobs.db")
    worker = JobWorker(second)
    worker.register(
        "prune", lambda _job, _progress: {}, on_interrupted=lambda job: cleaned.append(job.id)
    )
    interrupted = worker.recover()
    assert sorted(job.id for job in interrupted) == sorted([running.id, queued.id])
    assert sorted(cleaned) == sorted([running.id, queued.id])
    after = second.get(running.id)
    assert after.state == INTERRUPTED and after.progress == pytest.approx(0.4)
    assert "running" in after.error and second.get(queued.id).state == INTERRUPTED
    assert second.get(finished.id).state == SUCCEEDED and second.get(finished.id).result == {
        "variant_id": "z"
    }
    assert worker.recover() == []  # nothing left to interrupt
    second.close()


# ----------------------------------------------------------------------------- compute gate


def _hold_in_thread(gate: ComputeGate, release: threading.Event) -> threading.Thread:
    holding = threading.Event()

    def hold():
        with gate.hold("test holder", bounded=False):
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(5)
    return thread


def test_gate_refuses_at_once_when_the_line_is_full_and_gives_up_after_the_wait():
    gate = ComputeGate(max_waiting=1, wait_seconds=0.3)
    release = threading.Event()
    holder = _hold_in_thread(gate, release)
    outcomes = {}

    def waiter():
        try:
            with gate.hold("waiter"):
                outcomes["waiter"] = "ran"
        except BusyError as exc:
            outcomes["waiter"] = exc.status_code

    waiting = threading.Thread(target=waiter)
    waiting.start()
    wait_for(lambda: gate.waiting == 1)
    started = time.monotonic()
    with pytest.raises(BusyError) as full, gate.hold("third"):
        pass
    assert full.value.status_code == 429 and time.monotonic() - started < 0.1
    assert full.value.retry_after >= 1
    waiting.join(5)
    assert outcomes["waiter"] == 503  # waited 0.3 s, the holder never let go
    assert gate.busy and gate.holder == "test holder"
    release.set()
    holder.join(5)
    with gate.hold("after"):  # free again
        assert gate.holder == "after"
    assert not gate.busy and gate.waiting == 0


def test_a_waiter_gets_the_gate_when_the_holder_releases_it():
    gate = ComputeGate(max_waiting=2, wait_seconds=5)
    release = threading.Event()
    holder = _hold_in_thread(gate, release)
    order = []

    def waiter():
        with gate.hold("waiter"):
            order.append("waiter")

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_for(lambda: gate.waiting == 1)
    order.append("release")
    release.set()
    thread.join(5)
    holder.join(5)
    assert order == ["release", "waiter"]


# ----------------------------------------------------------------------------- model pool


def test_model_references_from_clients_are_restricted(tmp_path):
    settings = ApiSettings(cache_dir=tmp_path)
    pool = ModelPool(settings, default=tiny_loaded("llama"), budget_bytes=1 << 30)
    assert pool.allowed_reference(None) == "tiny-llama"
    assert pool.allowed_reference("tiny-llama") == "tiny-llama"
    assert pool.allowed_reference("facebook/opt-125m") == "facebook/opt-125m"
    assert pool.allowed_reference(settings.default_model) == settings.default_model
    outside = tmp_path / "not-listed"
    (outside / "x").mkdir(parents=True)
    for bad in (
        "../etc",
        "/etc/passwd",
        str(outside),
        "a/../b",
        "https://evil.example/x",
        "owner/na me",
        "owner\\name",
        "..",
        "a/b/c",
    ):
        with pytest.raises(UserError):
            pool.allowed_reference(bad)


def test_pool_keeps_the_default_and_evicts_least_recently_used_others(tmp_path):
    loads = []

    def loader(name):
        loads.append(name)
        model = tiny_loaded("opt", seed=len(loads))
        model.name = name
        return model

    one_model = model_bytes(tiny_loaded("opt"))
    pool = ModelPool(
        ApiSettings(cache_dir=tmp_path),
        default=tiny_loaded("llama"),
        budget_bytes=int(one_model * 1.5),
        loader=loader,
    )
    first = pool.get("org/first")
    assert pool.get("org/first") is first and loads == ["org/first"]  # loaded once
    pool.get("org/second")  # over budget with both: the older one goes
    assert pool.loaded_names() == ["tiny-llama", "org/second"]
    assert pool.get(None) is pool.default
    pool.get("org/first")
    assert loads == ["org/first", "org/second", "org/first"]
