"""Latency of cached reads under concurrency: p50/p95 with 16 clients. Goal: p95 < 50 ms on CPU.

Starts `prunelens serve` on a free loopback port (the embedded model, a throw-away cache dir),
stores one real NSA result (top-20 neurons, one variant) and one prune job, then 16 concurrent
clients, each on its own keep-alive connection, read GET /nsa/{id}, /jobs/{id}, /variants and
/health for --seconds, back to back (no think time).

The clients run in this process, on the same cores as the server, so what they cost is part of
every latency measured. The default client (`--client raw`) writes the request bytes and reads the
status line, the headers and exactly Content-Length bytes of body: about 0.1 ms of CPU per
request. `--client httpx` measures with httpx.AsyncClient instead, which costs ~3 ms of CPU per
request: on 2 cores its own queueing then dominates p95 (measured: p95 ~130 ms with httpx against
~9 ms with the raw client, same server). Both print the client's CPU per request next to the
server's, so the reader can see which side a figure belongs to.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "smollm2-135m-instruct"
GOAL_P95_MS = 50.0
TEXT = "The movie was painfully slow, but the acting was beautiful and the ending stayed with me."


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(cache: Path, port: int, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "PRUNELENS_CACHE_DIR": str(cache),
        "PRUNELENS_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PRUNELENS_API_TOKEN", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from backend.cli import main; sys.exit(main())",
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok":
                return process
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("server did not start")


def server_cpu_seconds(pid: int) -> float:
    """CPU time the server used (with its live child processes): its cost per request, whatever
    else the machine is doing."""
    server = psutil.Process(pid)
    total = 0.0
    for process in [server, *server.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def wait_for_job(client: httpx.Client, job_id: str) -> dict:
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)


async def raw_reader(
    port: int, paths: list[str], first: int, stop_at: float, latencies: dict, errors: list
) -> None:
    """One client on one keep-alive HTTP/1.1 connection; a response counts only when its status is
    200 and exactly Content-Length bytes of body arrived."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    requests = {path: f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for path in paths}
    step = first
    try:
        while time.monotonic() < stop_at:
            path = paths[step % len(paths)]
            step += 1
            started = time.perf_counter()
            writer.write(requests[path])
            head = await reader.readuntil(b"\r\n\r\n")
            length = None
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                errors.append(f"{path}: no Content-Length")
                return
            await reader.readexactly(length)
            elapsed = time.perf_counter() - started
            status = head.split(b" ", 2)[1]
            if status != b"200":
                errors.append(f"{path}: {status.decode()}")
            latencies[path].append(elapsed)
    finally:
        writer.close()


async def httpx_reader(
    client: httpx.AsyncClient,
    paths: list[str],
    first: int,
    stop_at: float,
    latencies: dict,
    errors: list,
) -> None:
    step = first
    while time.monotonic() < stop_at:
        path = paths[step % len(paths)]
        step += 1
        started = time.perf_counter()
        response = await client.get(path)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            errors.append(f"{path}: {response.status_code}")
        latencies[path].append(elapsed)


async def readers(
    port: int, paths: list[str], clients: int, seconds: float, kind: str
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {path: [] for path in paths}
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    if kind == "raw":
        await asyncio.gather(
            *(raw_reader(port, paths, i, stop_at, latencies, errors) for i in range(clients))
        )
    else:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as client:
            await asyncio.gather(
                *(
                    httpx_reader(client, paths, i, stop_at, latencies, errors)
                    for i in range(clients)
                )
            )
    if errors:
        raise SystemExit(f"{len(errors)} failed reads, e.g. {errors[0]}")
    return latencies


def wrk_cross_check(url: str, paths: list[str], clients: int, seconds: float, work: Path) -> str:
    """The same rotation of reads through wrk (a C load generator, when installed): an independent
    peer for our own client's figures."""
    script = work / "rotate.lua"
    quoted = ",".join(f'"{path}"' for path in paths)
    script.write_text(
        f"paths = {{{quoted}}}\nstep = 0\n"
        "request = function()\n  step = step + 1\n"
        "  return wrk.format('GET', paths[(step % #paths) + 1])\nend\n"
    )
    completed = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        check=False,  # a failure shows as its output below
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    wanted = ("Latency Distribution", "50%", "75%", "90%", "99%", "Requests/sec", "Non-2xx")
    lines = [
        line.strip() for line in completed.stdout.splitlines() if line.strip().startswith(wanted)
    ]
    return "\n".join(lines) or completed.stdout + completed.stderr


def quantile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator: raw keep-alive HTTP/1.1 (~0.1 ms CPU per request) or httpx (~3 ms)",
    )
    args = parser.parse_args()

    converted = REPO_ROOT / "models_cache" / "models" / EMBEDDED
    cache = Path(tempfile.mkdtemp(prefix="prunelens-bench-api-"))
    (cache / "models").mkdir()
    if converted.is_dir():  # reuse the converted checkpoint instead of converting again
        (cache / "models" / EMBEDDED).symlink_to(converted.resolve())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = None
    try:
        with open(cache / "server.log", "wb") as log:
            process = start_server(cache, port, log)
        with httpx.Client(base_url=url, timeout=600) as client:
            job = wait_for_job(
                client,
                client.post("/variants", json={"method": "magnitude", "sparsity": "0.5"}).json()[
                    "job"
                ]["id"],
            )
            variant_id = job["result"]["variant_id"]
            stored = client.post(
                "/nsa",
                json={
                    "text": TEXT,
                    "words": ["slow", "beautiful"],
                    "variants": [variant_id],
                    "top_k": 20,
                },
            )
            stored.raise_for_status()
            result_id, size = stored.json()["id"], len(stored.content)
        paths = [f"/nsa/{result_id}", f"/jobs/{job['id']}", "/variants", "/health"]
        asyncio.run(readers(port, paths, args.clients, 1.0, args.client))  # warm-up
        cpu_before = server_cpu_seconds(process.pid)
        client_cpu_before = time.process_time()
        latencies = asyncio.run(readers(port, paths, args.clients, args.seconds, args.client))
        client_cpu = time.process_time() - client_cpu_before
        server_cpu = server_cpu_seconds(process.pid) - cpu_before
        peer = None
        if shutil.which("wrk"):
            peer = wrk_cross_check(url, paths, args.clients, args.seconds, cache)
    finally:
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(15)
        shutil.rmtree(cache, ignore_errors=True)

    every = [value for values in latencies.values() for value in values]
    print(
        f"cached reads, {args.clients} concurrent clients ({args.client}), {args.seconds:g} s, "
        f"{os.cpu_count()} CPUs "
        f"(NSA result {size / 1024:.0f} KiB)"
    )
    print("| endpoint | requests | p50 ms | p95 ms |\n|---|---:|---:|---:|")
    for path, values in latencies.items():
        label = path.replace(result_id, "{id}").replace(job["id"], "{id}")
        print(
            f"| GET {label} | {len(values)} | {quantile_ms(values, 0.5):.1f} | {quantile_ms(values, 0.95):.1f} |"
        )
    p95 = quantile_ms(every, 0.95)
    print(
        f"| all | {len(every)} ({len(every) / args.seconds:.0f}/s) | {quantile_ms(every, 0.5):.1f} | {p95:.1f} |"
    )
    print(
        f"server CPU per request: {server_cpu / len(every) * 1000:.2f} ms "
        f"(a capacity of ~{len(every) / max(server_cpu, 1e-9):.0f} cached reads/s per core); "
        f"client CPU per request: {client_cpu / len(every) * 1000:.2f} ms"
    )
    print(f"goal p95 < {GOAL_P95_MS:g} ms: {'met' if p95 < GOAL_P95_MS else 'NOT met'}")
    if peer is None:
        print("cross-check: wrk is not installed (apt-get install wrk), skipped")
    else:
        print(f"cross-check, wrk -t1 -c{args.clients} over the same reads:\n{peer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
