"""`prunelens demo`: backend and dashboard on loopback at once, demo material prepared behind them.

``DemoPlan`` says what the demo prepares (pure data, tested): Wanda, SparseGPT and RIA at 50 %
and 2:4, each calibrated on a general-text set and on a task set; NSA results on real SST-2
sentences (dense first, so the explorer has something to show within a minute, then each method
with its four variants); evaluations of the dense model and every variant on four tasks with a
limit; a small neuron index (dense + two variants) for the Neuron page once the variants exist.
``DemoPreparation`` carries the plan out over HTTP, one job at a time, so the dashboard
stays responsive between jobs and every step shows on the *Variants & jobs* page.

Everything goes through the HTTP API; no torch is imported here.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import httpx

from frontend.client import BackendClient, BackendError, BackendUnavailable

APP_PATH = Path(__file__).resolve().parent / "app.py"
FINISHED = ("succeeded", "failed", "interrupted", "cancelled")
# The API compares at most this many variants in one NSA request.
NSA_MAX_VARIANTS = 8


class DemoError(Exception):
    """A server of the demo did not come up; the message says which and why."""


@dataclass(frozen=True)
class DemoPlan:
    """What the demo prepares. Defaults are sized for a 2-core CPU (about half an hour)."""

    model: str | None = None  # None: the backend's default (the embedded SmolLM2)
    methods: tuple[str, ...] = ("wanda", "sparsegpt", "ria")
    sparsities: tuple[str, ...] = ("0.5", "2:4")
    general_calibration: str = "lambada"  # offline general text; "c4" where the hub is reachable
    task_calibration: str = "sst2"
    nsamples: int = 16
    seqlen: int = 256
    seed: int = 0
    tasks: tuple[str, ...] = ("sst2", "rte", "boolq", "arc_easy")
    limit: int = 50
    nsa_dataset: str = "sst2"
    nsa_texts: int = 8
    top_k: int = 20
    # The neuron index of the Neuron page: dense + the first two variants over the corpus mix.
    # 50k tokens with a GPU; 20k on a CPU (three forward passes of 20k tokens: a few minutes).
    index_variants: int = 2
    index_tokens: int = 50_000
    index_tokens_cpu: int = 20_000

    @property
    def calibrations(self) -> tuple[str, str]:
        return self.general_calibration, self.task_calibration

    def prune_requests(self) -> list[dict]:
        """One POST /variants body per (method, sparsity, calibration): 3 x 2 x 2 = 12 by default."""
        return [
            {"model": self.model, "method": method, "sparsity": sparsity, "calibration": calibration,
             "nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed}
            for method in self.methods for sparsity in self.sparsities for calibration in self.calibrations
        ]

    def nsa_requests(self, texts: Sequence[str], variants_by_method: dict[str, list[str]]) -> list[dict]:
        """Dense-only first (fast), then one request per method with its variants (at most 8 each)."""
        base = {"model": self.model, "texts": list(texts), "task": "sentiment", "top_k": self.top_k}
        requests = [{**base, "variants": []}]
        for method in self.methods:
            ids = variants_by_method.get(method, [])
            for start in range(0, len(ids), NSA_MAX_VARIANTS):
                requests.append({**base, "variants": ids[start:start + NSA_MAX_VARIANTS]})
        return requests

    def index_request(self, variant_ids: Sequence[str], device: str | None) -> dict:
        """POST /index/jobs: the dense model and the first ``index_variants`` variants."""
        on_cpu = not device or str(device).startswith("cpu")
        return {"model": self.model, "variants": list(variant_ids[:self.index_variants]),
                "tokens": self.index_tokens_cpu if on_cpu else self.index_tokens, "seed": self.seed}

    def evaluation_requests(self, variant_ids: Sequence[str]) -> list[dict]:
        """The dense model (variant None) and every variant, on the plan's tasks with its limit."""
        return [{"model": self.model, "variant": variant, "tasks": list(self.tasks), "limit": self.limit}
                for variant in (None, *variant_ids)]


@dataclass
class DemoPreparation:
    """Runs a ``DemoPlan`` against a backend; ``say`` prints one line per step."""

    api: BackendClient
    plan: DemoPlan
    texts: Callable[[int], list[str]]  # n -> sentences for NSA ([] when unavailable: NSA is skipped)
    say: Callable[[str], None] = print
    poll_s: float = 1.0
    variant_ids: dict[str, list[str]] = field(default_factory=dict)  # method -> ids
    failures: list[str] = field(default_factory=list)

    def wait_for_job(self, job: dict) -> dict:
        while job["state"] not in FINISHED:
            time.sleep(self.poll_s)
            job = self.api.job(job["id"])
        return job

    def _call(self, label: str, call: Callable[[], dict], refused: str) -> dict | None:
        """Call the backend; a busy one (429/503) is waited for and retried, other refusals are
        recorded as failures (None) so the rest of the demo goes on."""
        while True:
            try:
                return call()
            except BackendUnavailable:
                raise
            except BackendError as exc:
                if exc.status in (429, 503):
                    time.sleep(exc.retry_after or 5.0)
                    continue
                self.failures.append(f"{label}: {exc}")
                self.say(f"[demo] {label}: {refused} ({exc})")
                return None

    def _submit(self, label: str, submit: Callable[[], dict]) -> dict | None:
        """Submit one job and wait for it."""
        accepted = self._call(label, submit, "refused")
        if accepted is None:
            return None
        job = self.wait_for_job(accepted["job"])
        if job["state"] != "succeeded":
            self.failures.append(f"{label}: {job.get('error') or job['state']}")
            self.say(f"[demo] {label}: {job['state']} ({job.get('error') or job.get('message')})")
            return None
        return job

    def _nsa(self, label: str, request: dict) -> str | None:
        envelope = self._call(label, lambda: self.api.nsa(request), "NSA refused")
        if envelope is None:
            return None
        self.say(f"[demo] {label}: NSA result {envelope['id']}")
        return envelope["id"]

    def run(self) -> list[str]:
        """Prepare everything; returns the failures (empty when all went well)."""
        plan = self.plan
        texts = self.texts(plan.nsa_texts)
        nsa = plan.nsa_requests(texts, {}) if texts else []
        if nsa:
            self._nsa(f"dense model on {len(texts)} {plan.nsa_dataset} sentences", nsa[0])

        prunes = plan.prune_requests()
        for number, request in enumerate(prunes, start=1):
            label = (f"{number}/{len(prunes)} prune {request['method']} {request['sparsity']} "
                     f"\u00b7 {request['calibration']}")
            self.say(f"[demo] {label} \u2026")
            job = self._submit(label, partial(self.api.create_variant, request))
            if job is not None:
                variant_id = str((job.get("result") or {}).get("variant_id"))
                self.variant_ids.setdefault(request["method"], []).append(variant_id)
                self.say(f"[demo] {label}: variant {variant_id}")

        all_variants = [vid for ids in self.variant_ids.values() for vid in ids]
        if all_variants:
            device = (self._call("health", self.api.health, "unreachable") or {}).get("device")
            request = plan.index_request(all_variants, device)
            label = f"neuron index: dense + {len(request['variants'])} variants, {request['tokens']} tokens"
            self.say(f"[demo] {label} \u2026")
            job = self._submit(label, partial(self.api.create_index, request))
            if job is not None:
                self.say(f"[demo] {label}: index {(job.get('result') or {}).get('index_id')}")

        if texts:
            for request in plan.nsa_requests(texts, self.variant_ids)[1:]:
                self._nsa(f"{len(request['variants'])} variants on {len(texts)} sentences", request)

        evaluations = plan.evaluation_requests(all_variants)
        for number, request in enumerate(evaluations, start=1):
            label = (f"{number}/{len(evaluations)} evaluate {request['variant'] or 'dense'} on "
                     f"{', '.join(request['tasks'])} (limit {request['limit']})")
            self.say(f"[demo] {label} \u2026")
            if self._submit(label, partial(self.api.create_evaluation, request)) is not None:
                self.say(f"[demo] {label}: done")
        self.say("[demo] preparation finished" + (f" with {len(self.failures)} problem(s)" if self.failures else ""))
        return self.failures


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, else one the system picks."""
    if preferred and port_is_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout_s: float, process: subprocess.Popen | None = None,
               what: str = "server") -> None:
    """Poll ``check`` until it is true; fail early when ``process`` died, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise DemoError(f"the {what} exited with code {process.returncode} before it was ready")
        try:
            if check():
                return
        except (BackendError, httpx.HTTPError):
            time.sleep(0.5)  # not listening yet
            continue
        time.sleep(0.5)
    raise DemoError(f"the {what} was not ready within {timeout_s:.0f} s")


def backend_command(port: int, log_level: str = "warning") -> list[str]:
    """`prunelens serve` on loopback, with this interpreter (``-m backend.cli`` would run the CLI
    module twice, and its subcommands register with the other copy)."""
    return [sys.executable, "-c", "import sys; from backend.cli import main; sys.exit(main())",
            "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", log_level]


def dashboard_command(port: int) -> list[str]:
    return [sys.executable, "-m", "streamlit", "run", str(APP_PATH), "--server.address=127.0.0.1",
            f"--server.port={port}", "--server.headless=true", "--browser.gatherUsageStats=false",
            "--client.toolbarMode=viewer"]  # no "Deploy" button


def dashboard_env(backend_url: str) -> dict[str, str]:
    root = str(APP_PATH.parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "BACKEND_URL": backend_url,
            "PYTHONPATH": f"{root}{os.pathsep}{path}" if path else root}


def stop(processes: Sequence[subprocess.Popen | None], grace_s: float = 6.0) -> None:
    """Terminate servers we started: SIGTERM to all at once, SIGKILL to any still running after
    ``grace_s`` in total, so stopping both takes at most a few seconds more than ``grace_s``."""
    running = [process for process in processes if process is not None and process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in running:
        try:
            process.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    return httpx.get(url, timeout=timeout_s).status_code == 200


@dataclass
class DemoServers:
    """The two servers the demo runs, and where their logs go."""

    backend_port: int
    dashboard_port: int
    log_dir: Path
    backend: subprocess.Popen | None = None
    dashboard: subprocess.Popen | None = None

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, ready_timeout_s: float = 600.0) -> None:
        """Start the backend, wait for its model, then the dashboard; DemoError if one fails."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        backend_log = open(self.log_dir / "backend.log", "ab")  # noqa: SIM115 (lives as long as the server)
        self.backend = subprocess.Popen(backend_command(self.backend_port), stdout=backend_log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        api = BackendClient(self.backend_url)
        wait_until(lambda: api.health().get("status") == "ok", ready_timeout_s, self.backend,
                   f"backend (log: {self.log_dir / 'backend.log'})")
        dashboard_log = open(self.log_dir / "dashboard.log", "ab")  # noqa: SIM115
        self.dashboard = subprocess.Popen(dashboard_command(self.dashboard_port), stdout=dashboard_log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=dashboard_env(self.backend_url))
        wait_until(lambda: http_ok(f"{self.dashboard_url}/_stcore/health"), 120.0, self.dashboard,
                   f"dashboard (log: {self.log_dir / 'dashboard.log'})")

    def running(self) -> bool:
        return all(p is not None and p.poll() is None for p in (self.backend, self.dashboard))

    def stop(self) -> None:
        stop([self.dashboard, self.backend])
