"""The ``prunelens`` command line: thin wrappers over the backend's functions.

Every problem the user can fix is a ``UserError``: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from backend.errors import UserError

# Feature packages keep their subcommands next to their code; importing one registers them.
# Their imports stay inside the runners, so `prunelens --help` does not load torch.
FEATURE_COMMAND_MODULES: tuple[str, ...] = ("backend.pruning.commands", "backend.data.commands", "backend.evaluation.commands", "backend.evaluation.experiment_commands", "backend.nsa.commands", "backend.api.commands", "backend.export.commands", "frontend.commands",
                                             "frontend.figure_commands")

# Populated by @command: name -> (help text, configure(parser) -> run(args) -> exit code)
_COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function adds arguments and returns the runner."""

    def register(configure: Callable[[argparse.ArgumentParser], Callable]):
        _COMMANDS[name] = (help_text, configure)
        return configure

    return register


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on error; we print one line and exit 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write next to the target and rename it in place: never a half-written file."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write next to the target and rename it in place: never a half-written file."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: folder does not exist")
    staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        staging.write_bytes(data)
        os.replace(staging, target)
    except OSError as exc:
        staging.unlink(missing_ok=True)
        raise UserError(f"{target}: cannot write ({exc.strerror})") from exc


def write_json_atomic(path: str | Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload))


def print_listing(rows: list[dict], as_json: bool, lines: Callable[[list[dict]], Iterable[str]]) -> int:
    """A listing command's output: the rows as JSON (``--json``) or the table ``lines`` writes."""
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        for line in lines(rows):
            print(line)
    return 0


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from exc


# --------------------------------------------------------------------------- commands


@command("models", "list the embedded default and cached models")
def _models(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args) -> int:
        from backend.models.loader import list_models

        def lines(rows: list[dict]) -> Iterator[str]:
            for row in rows:
                state = "ready" if row["converted"] else "converted on first use"
                marker = " (default)" if row["default"] else ""
                yield f"{row['name']}{marker}\t{row['source']}\t{state}"

        return print_listing(list_models(), args.json, lines)

    return run


@command("activations", "record neuron activations (down-projection inputs) for a text")
def _activations(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--text", required=True, help="the text to run through the model")
    parser.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    parser.add_argument("--json", dest="json_out", required=True, help="output JSON file")

    def run(args) -> int:
        from backend.models.loader import load_model
        from backend.nsa.capture import capture_text

        layers = parse_int_list(args.layers, "--layers") if args.layers else None
        if not args.text.strip():
            raise UserError("--text is empty")
        loaded = load_model(args.model)
        result = capture_text(loaded, args.text, layers)
        if result.truncated:
            print(f"warning: text truncated to the model's context of {loaded.max_length} tokens",
                  file=sys.stderr)
        write_json_atomic(args.json_out, result.to_json())
        print(f"{len(result.tokens)} tokens x {len(result.layers)} layers -> {args.json_out}")
        return 0

    return run


def _one_line_warnings() -> None:
    """Warnings (a capped seqlen, a truncated text) print as one line, like errors."""
    warnings.formatwarning = lambda message, *_args, **_kwargs: f"warning: {message}\n"


def _quiet_library_progress() -> None:
    """Our own progress bars say what is happening; transformers' per-tensor bars only add noise."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:  # the frontend-only install has no transformers
        return
    transformers_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    for module in FEATURE_COMMAND_MODULES:
        importlib.import_module(module)  # each registers its subcommands with @command

    parser = _OneLineParser(
        prog="prunelens",
        description="Prune LLMs, evaluate the variants, and see which neurons (and words) pruning took.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    subparsers.required = True
    for name, (help_text, configure) in _COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(run=configure(sub))
    return parser


def main(argv: list[str] | None = None) -> int:
    from backend.process_setup import configure_process

    configure_process()
    _quiet_library_progress()
    _one_line_warnings()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the imported module's main: feature modules register on `backend.cli`, not `__main__`.
    from backend.cli import main as registered_main

    sys.exit(registered_main())
