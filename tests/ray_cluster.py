"""A real multi-process Ray cluster on loopback for tests: a head node and a second node joined with
``ray start --address``, one CPU each, started with the virtualenv's own ``ray`` and stopped again
(also when the test fails) by ending exactly the processes this cluster started.

The processes are found by the cluster's own temporary folder, which every Ray daemon names on its
command line, and their children; ``ray stop`` is not used because it ends every Ray process of
the user on the machine, other clusters included.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

RAY_EXECUTABLE = Path(sys.executable).with_name("ray")
REPO_ROOT = Path(__file__).resolve().parents[1]
# One environment for the daemons, their workers and the test's driver: the repository importable
# (workers run project code), no token authentication (a loopback cluster of this test only).
CLUSTER_ENVIRONMENT = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
MISSING_REASON = f"Ray's command line ({RAY_EXECUTABLE.name}) is not installed next to {Path(sys.executable).name}"


def ray_available() -> bool:
    return RAY_EXECUTABLE.is_file() and os.access(RAY_EXECUTABLE, os.X_OK)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """The daemons naming ``temp_dir`` on their command line, and all their descendants."""
    found: dict[int, psutil.Process] = {}
    for process in psutil.process_iter(["cmdline"]):
        if any(str(temp_dir) in part for part in process.info["cmdline"] or ()):
            found[process.pid] = process
            try:
                found |= {child.pid: child for child in process.children(recursive=True)}
            except psutil.NoSuchProcess:
                pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_cluster(temp_dir: Path) -> None:
    processes = _cluster_processes(temp_dir)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _gone, alive = psutil.wait_procs(processes, timeout=10)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def worker_pids(temp_dir: Path) -> list[int]:
    """The Ray worker processes (the ones that run tasks) of this cluster."""
    return [p.pid for p in _cluster_processes(temp_dir) if "default_worker" in " ".join(p.cmdline())]


@contextmanager
def loopback_cluster(extra_environment: dict[str, str] | None = None) -> Iterator[tuple[str, Path]]:
    """Yield (address, temp folder) of a two-node cluster on 127.0.0.1; ``extra_environment``
    reaches the daemons and so every worker."""
    # Short folder name: Ray's socket paths under it must fit a Unix socket's 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="plray-", dir="/tmp" if os.path.isdir("/tmp") else None))
    port = _free_port()
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, **CLUSTER_ENVIRONMENT, **(extra_environment or {}), "PYTHONPATH": python_path}
    environment.pop("RAY_ADDRESS", None)
    node = ["--num-cpus=1", "--object-store-memory=80000000", "--disable-usage-stats",
            "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}"]
    try:
        for arguments in (["--head", f"--port={port}", "--include-dashboard=false"],
                          [f"--address=127.0.0.1:{port}"]):
            subprocess.run([str(RAY_EXECUTABLE), "start", *arguments, *node], env=environment, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=180)
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        stop_cluster(temp_dir)


def wait_for_nodes(count: int, timeout: float = 120.0) -> None:
    """Wait until the connected driver sees ``count`` live nodes."""
    import ray

    deadline = time.monotonic() + timeout
    while sum(node["Alive"] for node in ray.nodes()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} Ray nodes alive after {timeout} s")
        time.sleep(0.5)
