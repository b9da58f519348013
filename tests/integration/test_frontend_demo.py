"""`prunelens demo` starts both servers on loopback, prints the URL, and Ctrl-C (or kill) stops both."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from frontend.demo import free_port, port_is_free
from tests.e2e.servers import isolated_cache

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _start_demo(tmp_path, *, ignore_sigint: bool) -> tuple[subprocess.Popen, int, int]:
    """The demo in its own session (process group), so cleanup can kill it and both servers."""
    backend_port, dashboard_port = free_port(0), free_port(0)
    env = {**os.environ, "PRUNELENS_CACHE_DIR": str(isolated_cache(tmp_path)), "PRUNELENS_DEVICE": "cpu"}
    env.pop("PRUNELENS_API_TOKEN", None)

    # What nohup or a runner's background job does: the parent ignores SIGINT while it starts the
    # demo, and an ignored disposition is inherited across fork and exec.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignore_sigint else None
    try:
        demo = subprocess.Popen(
            [sys.executable, "-c", "import sys; from backend.cli import main; sys.exit(main())", "demo",
             "--no-prepare", "--port", str(dashboard_port), "--backend-port", str(backend_port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return demo, backend_port, dashboard_port


def _wait_for_url(demo: subprocess.Popen) -> str | None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            return None
        if line.startswith("PruneLens dashboard: "):
            return line.split(": ", 1)[1].strip()
    return None


def _kill_group(demo: subprocess.Popen) -> None:
    """Whatever happened: SIGKILL the demo's whole process group (the demo and both servers)."""
    try:
        os.killpg(demo.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    demo.wait(30)


@pytest.mark.parametrize("stop_signal,ignore_sigint", [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True),
], ids=["ctrl-c", "kill", "ctrl-c-with-sigint-ignored-by-parent"])
def test_demo_serves_backend_and_dashboard_then_stops_both(tmp_path, stop_signal, ignore_sigint, embedded):
    # `embedded` converts the model on a fresh clone first; the demo then shares the checkpoint.
    demo, backend_port, dashboard_port = _start_demo(tmp_path, ignore_sigint=ignore_sigint)
    try:
        url = _wait_for_url(demo)
        assert url == f"http://127.0.0.1:{dashboard_port}", demo.stdout.read() if demo.poll() is not None else url
        assert httpx.get(f"{url}/_stcore/health", timeout=10).text == "ok"
        health = httpx.get(f"http://127.0.0.1:{backend_port}/health", timeout=10).json()
        assert health["status"] == "ok" and health["default_model"] == "smollm2-135m-instruct"
        sent = time.monotonic()
        demo.send_signal(stop_signal)
        while not (port_is_free(dashboard_port) and port_is_free(backend_port)) and time.monotonic() - sent < 10:
            time.sleep(0.1)
        freed_after = time.monotonic() - sent
        assert port_is_free(dashboard_port) and port_is_free(backend_port), "a server outlived the demo"
        assert freed_after < 10
        assert demo.wait(10) == 0
    finally:
        _kill_group(demo)
