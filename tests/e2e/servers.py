"""Real servers for the browser tests: `prunelens serve` (embedded model, CPU) and the Streamlit
dashboard on free loopback ports, in an isolated cache, stopped on exit whatever happened."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from frontend.client import BackendClient
from frontend.demo import (
    backend_command,
    dashboard_command,
    dashboard_env,
    free_port,
    http_ok,
    stop,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
EMBEDDED = REPO / "models_cache" / "models" / "smollm2-135m-instruct"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium (never a downloaded browser)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def isolated_cache(root: Path) -> Path:
    """A fresh cache folder that shares the converted embedded model (read-only use)."""
    cache = root / "cache"
    (cache / "models").mkdir(parents=True)
    (cache / "models" / EMBEDDED.name).symlink_to(EMBEDDED.resolve())
    return cache


@contextmanager
def running_servers(cache: Path, logs: Path):
    """Yield ``(backend client, dashboard URL)``; both servers are stopped in ``finally``."""
    env = {**os.environ, "PRUNELENS_CACHE_DIR": str(cache), "PRUNELENS_DEVICE": "cpu"}
    env.pop("PRUNELENS_API_TOKEN", None)
    env.pop("PRUNELENS_RESULTS_URL", None)
    logs.mkdir(parents=True, exist_ok=True)
    backend_port, dashboard_port = free_port(0), free_port(0)
    backend = dashboard = None
    try:
        with open(logs / "backend.log", "wb") as backend_log, open(logs / "dashboard.log", "wb") as dashboard_log:
            backend = subprocess.Popen(backend_command(backend_port), env=env, cwd=REPO, stdout=backend_log,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            backend_url = f"http://127.0.0.1:{backend_port}"
            api = BackendClient(backend_url, token="", http=httpx.Client(base_url=backend_url, timeout=600))
            wait_until(lambda: api.health().get("status") == "ok", 180, backend, "backend")
            dashboard = subprocess.Popen(dashboard_command(dashboard_port), env={**dashboard_env(backend_url),
                                         "PRUNELENS_CACHE_DIR": str(cache)}, cwd=REPO, stdout=dashboard_log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            dashboard_url = f"http://127.0.0.1:{dashboard_port}"
            wait_until(lambda: http_ok(f"{dashboard_url}/_stcore/health"), 90, dashboard, "dashboard")
            yield api, dashboard_url
    finally:
        stop([dashboard, backend])


def wait_for_job(api: BackendClient, job_id: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.job(job_id)
        if job["state"] in ("succeeded", "failed", "interrupted"):
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still running after {timeout_s} s")
