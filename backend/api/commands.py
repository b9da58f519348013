"""The servers from the command line: ``prunelens serve`` (the HTTP API with uvicorn, on loopback
unless told otherwise) and ``prunelens demo`` (backend + dashboard on loopback, demo material
prepared behind them).

The demo's servers run as subprocesses; this process only talks HTTP to them (``frontend.demo``,
``frontend.client``): as the command line, it is the one place that knows both packages.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import threading
import time
from pathlib import Path

from backend.commands import command
from backend.errors import UserError

LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: str | None) -> None:
    """Anything but loopback is reachable from the network: refuse to serve it without a token."""
    if not is_loopback(host) and not token:
        raise UserError(
            f"refusing to listen on {host}: set PRUNELENS_API_TOKEN (clients then send "
            "'Authorization: Bearer <token>') or bind to 127.0.0.1"
        )


@command("serve", "run the HTTP API (FastAPI) for the dashboard and other clients")
def _serve(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1; others need PRUNELENS_API_TOKEN)",
    )
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--model",
        default=None,
        help="default model to load at start (default: PRUNELENS_DEFAULT_MODEL or the embedded one)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )

    def run(args) -> int:
        from backend.api.settings import api_settings

        settings = api_settings()
        if args.model:
            settings = settings.model_copy(update={"default_model": args.model})
        check_bind(args.host, settings.api_token)
        if not 0 <= args.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535, got {args.port}")

        import uvicorn

        from backend.api.app import create_app

        app = create_app(settings, start_page_workers=True)
        # One server process: it holds the model in memory and runs the job worker; neuron pages
        # not read before are built by its page worker processes (PRUNELENS_API_PAGE_PROCESSES).
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            workers=1,
            timeout_graceful_shutdown=5,
        )
        return 0

    return run


def sentences(api, dataset: str, n: int, seed: int = 0) -> list[str]:
    """Real labelled sentences for NSA, from the backend (GET /samples). Empty, with a line saying
    why, when the backend has none: the rest of the demo still runs."""
    from frontend.client import BackendError

    try:
        return [row["text"] for row in api.samples(dataset, n, seed)]
    except BackendError as exc:
        print(f"[demo] no {dataset} sentences for NSA ({exc})", flush=True)
        return []


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


@command("demo", "start the backend and the dashboard on loopback and prepare demo variants, "
                 "evaluations and NSA results in the background")
def _demo(parser: argparse.ArgumentParser):
    parser.add_argument("--port", type=int, default=8501,
                        help="dashboard port (default 8501; a free one if it is taken)")
    parser.add_argument("--backend-port", type=int, default=8000,
                        help="backend port (default 8000; a free one if it is taken)")
    parser.add_argument("--no-prepare", action="store_true", help="only start the two servers")
    parser.add_argument("--model", default=None, help="base model (default: the backend's default)")
    parser.add_argument("--general-calibration", default="lambada",
                        help="general-text calibration set (default lambada, offline; c4 needs the hub)")
    parser.add_argument("--task-calibration", default="sst2", help="task calibration set (default sst2)")
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows (default 16)")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--tasks", default="sst2,rte,boolq,arc_easy", help="evaluation tasks")
    parser.add_argument("--limit", type=int, default=50, help="examples per task (default 50)")
    parser.add_argument("--texts", type=int, default=8, help="SST-2 sentences for NSA (default 8)")
    parser.add_argument("--ready-timeout", type=float, default=600.0,
                        help="seconds to wait for the backend's model (first run converts it)")

    def run(args) -> int:
        from frontend.client import BackendClient, BackendUnavailable
        from frontend.demo import DemoError, DemoPlan, DemoPreparation, DemoServers, free_port

        for name in ("nsamples", "seqlen", "limit", "texts"):
            if getattr(args, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        tasks = tuple(task.strip() for task in args.tasks.split(",") if task.strip())
        if not tasks:
            raise UserError("--tasks is empty")
        plan = DemoPlan(model=args.model, general_calibration=args.general_calibration,
                        task_calibration=args.task_calibration, nsamples=args.nsamples, seqlen=args.seqlen,
                        tasks=tasks, limit=args.limit, nsa_texts=args.texts)
        # Our own handlers, not the inherited disposition: a parent that ignores SIGINT (nohup, a
        # background job, a runner) would otherwise make Ctrl-C do nothing while both servers run.
        # `kill` and a closed terminal stop the servers too.
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, _interrupt)
        cache_dir = Path(os.environ.get("PRUNELENS_CACHE_DIR", "models_cache"))
        servers = DemoServers(free_port(args.backend_port), free_port(args.port), cache_dir / "demo-logs")
        try:
            print(f"starting the backend on {servers.backend_url} (model load; logs in {servers.log_dir}) …",
                  flush=True)
            servers.start(args.ready_timeout)
            print(f"\nPruneLens dashboard: {servers.dashboard_url}\n(backend {servers.backend_url}; "
                  "Ctrl-C stops both)\n", flush=True)
            if not args.no_prepare:
                api = BackendClient(servers.backend_url)
                preparation = DemoPreparation(api, plan, lambda n: sentences(api, plan.nsa_dataset, n),
                                              say=lambda line: print(line, flush=True))

                def prepare() -> None:
                    try:
                        preparation.run()
                    except BackendUnavailable:
                        print("[demo] the backend stopped; preparation abandoned", flush=True)

                threading.Thread(target=prepare, name="demo-preparation", daemon=True).start()
            while servers.running():
                time.sleep(1.0)
            print("a server stopped; see the logs in " + str(servers.log_dir))
            return 1
        except DemoError as exc:
            raise UserError(str(exc)) from exc
        except KeyboardInterrupt:
            print("\nstopping …", flush=True)
            return 0
        finally:
            servers.stop()

    return run
