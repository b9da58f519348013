"""The ``prunelens`` entry point: builds the parser from the registered subcommands and runs one.

The subcommands live next to their code (``backend/<package>/commands.py``), registered with
``backend.commands.command``.

Every problem the user can fix is a ``UserError``: printed as one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from backend.commands import registered_commands
from backend.errors import UserError

# Feature packages keep their subcommands next to their code; importing one registers them.
# Their imports stay inside the runners, so `prunelens --help` does not load torch.
FEATURE_COMMAND_MODULES: tuple[str, ...] = (
    "backend.models.commands",
    "backend.pruning.commands",
    "backend.data.commands",
    "backend.evaluation.commands",
    "backend.evaluation.speed_commands",
    "backend.guided.commands",
    "backend.studies.commands",
    "backend.nsa.commands",
    "backend.neurons.commands",
    "backend.api.commands",
    "backend.export.commands",
)


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on error; we print one line and exit 2."""

    def error(self, message: str):
        raise UserError(f"{self.prog}: {message}")


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
    for name, (help_text, configure) in registered_commands().items():
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
