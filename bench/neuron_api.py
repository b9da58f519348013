"""Neuron page latency under concurrency: p50/p95 of GET /neurons/... with 16 clients, cold and warm.

Starts `prunelens serve` on a free loopback port (the embedded model, a throw-away cache dir),
prunes one variant (magnitude 50 %: no calibration pass) and builds a small neuron index through
POST /index/jobs. Then 16 concurrent clients, each on its own keep-alive connection, read neuron
pages (with the variant, so each page carries both models, the agreement and the re-read examples):

- cold: every request asks for a neuron no one has read yet, so every answer is read from the
  index's Parquet files by DuckDB (the server's page cache never helps);
- warm: the clients rotate over 64 neurons that were each read once before.

The clients are bench/api.py's raw HTTP/1.1 readers (about 0.1 ms of CPU per request), run in this
process on the same cores as the server. Goal: p95 <= 50 ms for both.
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

from bench.api import GOAL_P95_MS, free_port, quantile_ms, raw_reader, start_server, wait_for_job


async def read_all(port: int, per_client: list[list[str]], seconds: float) -> list[float]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    stop_at = time.monotonic() + seconds
    await asyncio.gather(*(raw_reader(port, paths, 0, stop_at, latencies, errors) for paths in per_client))
    if errors:
        raise SystemExit(f"{len(errors)} failed reads, e.g. {errors[0]}")
    return [value for values in latencies.values() for value in values]


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
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prunelens-neuron-bench-"))
    cache = work / "cache"
    (cache / "models").mkdir(parents=True)
    shared = Path(__file__).resolve().parents[1] / "models_cache" / "models" / "smollm2-135m-instruct"
    if shared.is_dir():
        (cache / "models" / shared.name).symlink_to(shared.resolve())
    port = free_port()
    with open(work / "server.log", "wb") as log:
        server = start_server(cache, port, log)
        try:
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=3600)
            started = time.monotonic()
            job = wait_for_job(client, client.post("/variants", json={"method": "magnitude", "sparsity": "0.5"})
                               .json()["job"]["id"])
            variant = job["result"]["variant_id"]
            accepted = client.post("/index/jobs", json={"variants": [variant], "tokens": args.tokens})
            job = wait_for_job(client, accepted.json()["job"]["id"])
            if job["state"] != "succeeded":
                raise SystemExit(f"index build {job['state']}: {job.get('error')}")
            index = job["result"]["index_id"]
            manifest = client.get(f"/indexes/{index}").json()
            print(f"index {index}: {manifest.get('tokens')} tokens, dense + 1 variant, built in "
                  f"{time.monotonic() - started:.0f} s (with the prune)")
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
            cold = asyncio.run(read_all(port, per_client, args.seconds))
            if len(cold) >= len(unread):
                raise SystemExit("ran out of unread neurons: shorten --seconds")
            warm = asyncio.run(read_all(port, [warm_set[i:] + warm_set[:i] for i in range(args.clients)],
                                        args.seconds))
            print(f"{args.clients} concurrent clients, neuron pages with one variant:")
            ok = report("cold", cold) & report("warm", warm)
        finally:
            server.terminate()
            server.wait(20)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
