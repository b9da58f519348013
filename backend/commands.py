"""The subcommand registry and the helpers every feature's commands share (ground floor).

Feature packages keep their subcommands next to their code (``<package>/commands.py``) and
register them with ``@command``; ``backend.cli`` only imports those modules and builds the
parser. Living here, below every package, the registry can be imported by any of them without
an arrow that runs back up to the entry point.
"""

from __future__ import annotations

import argparse
import json
import typing
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


def add_field_argument(parser: argparse.ArgumentParser, name: str, annotation: object, help_text: str) -> None:
    """One ``--name`` flag for a pydantic field of type ``annotation`` (bool: --name/--no-name;
    Literal: its choices). The default stays None, so a flag not given leaves the model's
    default, and the model checks values and bounds."""
    flag = "--" + name.replace("_", "-")
    if annotation is bool:
        parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(flag, dest=name, choices=typing.get_args(annotation), default=None, help=help_text)
    else:
        parse = int if annotation is int else float if annotation is float else str
        parser.add_argument(flag, dest=name, type=parse, default=None, help=help_text)


def field_help(info) -> str:
    """A pydantic field's help line: its description, bounds and default (argparse escapes %)."""
    bounds = [f"{symbol} {getattr(rule, attr)}" for rule in info.metadata
              for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(rule, attr, None) is not None]
    default = "" if info.is_required() else f"default {info.default}"
    detail = ", ".join([*bounds, default] if default else bounds)
    description = (info.description or "").rstrip(".")
    return f"{description} ({detail})".replace("%", "%%") if detail else description


def add_model_arguments(parser: argparse.ArgumentParser, model: type, *, skip: Iterable[str] = ()) -> list[str]:
    """One flag per field of the pydantic ``model`` (but ``skip``): the CLI side of options
    declared once. Returns the field names, for ``given_arguments``."""
    names = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        if name in skip:
            continue
        add_field_argument(parser, name, info.annotation, field_help(info))
        names.append(name)
    return names


def given_arguments(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The flags of ``names`` given on the command line (None = not given: the model's default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from exc
