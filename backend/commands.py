"""The subcommand registry and the helpers every feature's commands share (ground floor).

Feature packages keep their subcommands next to their code (``<package>/commands.py``) and
register them with ``@command``; ``backend.cli`` only imports those modules and builds the
parser. Living here, below every package, the registry can be imported by any of them without
an arrow that runs back up to the entry point.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from typing import Any

from backend.errors import UserError

# Populated by @command: name -> (help text, configure(parser) -> run(args) -> exit code)
_COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help_text: str):
    """Register a subcommand: the decorated function adds arguments and returns the runner."""

    def register(configure: Callable[[argparse.ArgumentParser], Callable]):
        _COMMANDS[name] = (help_text, configure)
        return configure

    return register


def registered_commands() -> dict[str, tuple[str, Callable]]:
    """The registered subcommands, in registration order."""
    return dict(_COMMANDS)


def print_listing(rows: Any, as_json: bool, lines: Callable[[Any], Iterable[str]]) -> int:
    """A command's output: ``rows`` (a list of rows or one object) as JSON (``--json``), or the
    lines that ``lines(rows)`` writes."""
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
