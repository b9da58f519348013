"""CLI command ``prunelens demo``: backend + dashboard on loopback, demo material prepared behind them.

Registered through ``backend.cli.FEATURE_COMMAND_MODULES``. The servers run as subprocesses;
this process only talks HTTP to them (see ``frontend.demo``).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

from backend.commands import command
from backend.errors import UserError


def sentences(api, dataset: str, n: int, seed: int = 0) -> list[str]:
    """Real labelled sentences for NSA: from the backend (GET /samples) or, where it has no such
    endpoint, read here from the same packaged data (the demo runs beside the backend). Empty,
    with a line saying why, when the data is not installed: the rest of the demo still runs."""
    from frontend.client import BackendError

    try:
        return [row["text"] for row in api.samples(dataset, n, seed)]
    except BackendError as exc:
        if exc.status != 404:
            print(f"[demo] no {dataset} sentences for NSA ({exc})", flush=True)
            return []
    from backend.data.sources import labelled_examples

    try:
        return [row["text"] for row in labelled_examples(dataset, n, seed)]
    except UserError as exc:
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
