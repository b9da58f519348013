"""Neuron page latency under concurrency: p50/p95 of GET /neurons/... with 16 clients, cold and warm.

Starts `prunelens serve` on a free loopback port (the embedded model, a throw-away cache dir),
prunes one variant (magnitude 50 %: no calibration pass) and builds a small neuron index through
POST /index/jobs. Then 16 concurrent clients, each on its own keep-alive connection, read neuron
pages (with the variant, so each page carries both models, the agreement and the re-read examples):

- cold: every request asks for a neuron no one has read yet, so every answer is read from the
  index's Parquet files by DuckDB (the server's page cache never helps);
- warm: the clients rotate over 64 neurons that were each read once before.

The clients are bench/api.py's raw HTTP/1.1 readers (about 0.1 ms of CPU per request), run in this
process on the same cores as the server; each phase prints the CPU the server and the clients
spent per read, so a reader sees which side a figure belongs to. Goal: p95 <= 50 ms for both.

``--cache DIR`` keeps the server's cache folder (the prune and the index) and reuses a finished
index found there, so the code of the pages can be compared on one index without rebuilding it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

from bench.api import (
    GOAL_P95_MS,
    free_port,
    quantile_ms,
    raw_reader,
    server_cpu_seconds,
    start_server,
    wait_for_job,
)


def read_all(port: int, per_client: list[list[str]], seconds: float, server: int) -> tuple[list[float], str]:
    """The latencies of every read, and a line of the CPU the server (all its processes) and these
    clients spent per read."""
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []

    async def clients() -> None:
        stop_at = time.monotonic() + seconds
        await asyncio.gather(*(raw_reader(port, paths, 0, stop_at, latencies, errors) for paths in per_client))

    server_before, client_before = server_cpu_seconds(server), time.process_time()
    asyncio.run(clients())
    server_cpu, client_cpu = server_cpu_seconds(server) - server_before, time.process_time() - client_before
    if errors:
        raise SystemExit(f"{len(errors)} failed reads, e.g. {errors[0]}")
    values = [value for values in latencies.values() for value in values]
    reads = max(1, len(values))
    return values, (f"CPU per read: server {1000 * server_cpu / reads:.2f} ms, "
                    f"clients {1000 * client_cpu / reads:.2f} ms")


def built_index(client: httpx.Client, tokens: int) -> tuple[str, str] | None:
    """(index, variant) of a finished index of ``tokens`` tokens with one variant, if the cache holds one."""
    for row in client.get("/indexes").json():
        manifest = client.get(f"/indexes/{row['id']}").json()
        if manifest.get("tokens") == tokens and len(manifest.get("variants", [])) == 1:
            return row["id"], manifest["variants"][0]
    return None


def report(name: str, values: list[float]) -> bool:
    p50, p95 = quantile_ms(values, 0.5), quantile_ms(values, 0.95)
    print(f"{name:>5}: {len(values):6d} reads  p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  "
          f"({'meets' if p95 <= GOAL_P95_MS else 'misses'} the goal p95 <= {GOAL_P95_MS:g} ms)")
    return p95 <= GOAL_P95_MS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each phase")
    parser.add_argument("--tokens", type=int, default=5000, help="corpus tokens of the index")
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the server's cache folder here and reuse the index it holds")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prunelens-neuron-bench-"))
    cache = args.cache.resolve() if args.cache is not None else work / "cache"
    (cache / "models").mkdir(parents=True, exist_ok=True)
    shared = Path(__file__).resolve().parents[1] / "models_cache" / "models" / "smollm2-135m-instruct"
    if shared.is_dir() and not (cache / "models" / shared.name).exists():
        (cache / "models" / shared.name).symlink_to(shared.resolve())
    port = free_port()
    with open(work / "server.log", "wb") as log:
        server = start_server(cache, port, log)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
            started = time.monotonic()
            found = built_index(client, args.tokens) if args.cache is not None else None
            if found is None:
                job = wait_for_job(client, client.post("/variants", json={"method": "magnitude", "sparsity": "0.5"})
                                   .json()["job"]["id"])
                variant = job["result"]["variant_id"]
                accepted = client.post("/index/jobs", json={"variants": [variant], "tokens": args.tokens})
                job = wait_for_job(client, accepted.json()["job"]["id"])
                if job["state"] != "succeeded":
                    raise SystemExit(f"index build {job['state']}: {job.get('error')}")
                index = job["result"]["index_id"]
            else:
                index, variant = found
            manifest = client.get(f"/indexes/{index}").json()
            how = ("reused from --cache" if found is not None
                   else f"built in {time.monotonic() - started:.0f} s (with the prune)")
            print(f"index {index}: {manifest.get('tokens')} tokens, dense + 1 variant, {how}")
            model = manifest["model"]
            layers = manifest["layers"]
            layers = range(layers) if isinstance(layers, int) else layers
            neurons = [(layer, neuron) for layer in layers for neuron in range(manifest["neurons"])]
            random.Random(0).shuffle(neurons)

            def page(layer: int, neuron: int) -> str:
                return f"/neurons/{model}/{layer}/{neuron}?variant={variant}&index={index}"

            warm_set = [page(*key) for key in neurons[:64]]
            for path in warm_set:  # each read once: the server keeps the answer
                client.get(path).raise_for_status()
            unread = [page(*key) for key in neurons[64:]]
            per_client = [unread[i::args.clients] for i in range(args.clients)]
            cold, cold_cpu = read_all(port, per_client, args.seconds, server.pid)
            if len(cold) >= len(unread):
                raise SystemExit("ran out of unread neurons: shorten --seconds")
            warm, warm_cpu = read_all(port, [warm_set[i:] + warm_set[:i] for i in range(args.clients)],
                                      args.seconds, server.pid)
            print(f"{args.clients} concurrent clients, neuron pages with one variant:")
            ok = report("cold", cold) & report("warm", warm)
            print(f" cold {cold_cpu}\n warm {warm_cpu}")
        finally:
            server.terminate()
            server.wait(20)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
