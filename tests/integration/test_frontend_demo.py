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


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_demo_serves_backend_and_dashboard_then_stops_both(tmp_path, stop_signal, embedded):
    # `embedded` converts the model on a fresh clone first; the demo then shares the checkpoint.
    backend_port, dashboard_port = free_port(0), free_port(0)
    env = {**os.environ, "PRUNELENS_CACHE_DIR": str(isolated_cache(tmp_path)), "PRUNELENS_DEVICE": "cpu"}
    env.pop("PRUNELENS_API_TOKEN", None)
    demo = subprocess.Popen(
        [sys.executable, "-c", "import sys; from backend.cli import main; sys.exit(main())", "demo",
         "--no-prepare", "--port", str(dashboard_port), "--backend-port", str(backend_port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline, url = time.monotonic() + 240, None
        while url is None and time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            if line.startswith("PruneLens dashboard: "):
                url = line.split(": ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{dashboard_port}", demo.stdout.read() if demo.poll() is not None else url
        assert httpx.get(f"{url}/_stcore/health", timeout=10).text == "ok"
        health = httpx.get(f"http://127.0.0.1:{backend_port}/health", timeout=10).json()
        assert health["status"] == "ok" and health["default_model"] == "smollm2-135m-instruct"
        demo.send_signal(stop_signal)
        assert demo.wait(60) == 0
        assert port_is_free(dashboard_port) and port_is_free(backend_port)  # both servers gone
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(30)
