"""CLI command ``prunelens serve``: run the HTTP API with uvicorn, on loopback unless told otherwise."""

from __future__ import annotations

import argparse
import ipaddress

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

        app = create_app(settings)
        # One process: it holds the model in memory and runs the job worker.
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
