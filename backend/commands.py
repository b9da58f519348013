"""The subcommand registry and the helpers every feature's commands share (ground floor).

Feature packages keep their subcommands next to their code (``<package>/commands.py``) and
register them with ``@command``; ``backend.cli`` only imports those modules and builds the
parser. Living here, below every package, the registry can be imported by any of them without
an arrow that runs back up to the entry point.
"""

from __future__ import annotations

import argparse
import copy
import json
import types
import typing
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ValidationError

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


def print_listing(rows: list[dict], as_json: bool, lines: Callable[[list[dict]], Iterable[str]]) -> int:
    """A listing command's output: the rows as JSON (``--json``) or the table ``lines`` writes."""
    return print_result(rows, as_json, lines)


ResultT = typing.TypeVar("ResultT")


def print_result(result: ResultT, as_json: bool, lines: Callable[[ResultT], Iterable[str]]) -> int:
    """A command's output, one object or a listing: as JSON (``--json``) or the text ``lines`` writes."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for line in lines(result):
            print(line)
    return 0


def add_field_argument(parser: argparse.ArgumentParser, name: str, annotation: object, help_text: str,
                       dest: str | None = None) -> None:
    """One ``--name`` flag for a pydantic field of type ``annotation`` (bool: --name/--no-name;
    Literal: its choices). The default stays None, so a flag not given leaves the model's
    default, and the model checks values and bounds."""
    flag = "--" + name.replace("_", "-")
    dest = dest or name
    annotation = _without_none(annotation)
    if annotation is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif typing.get_origin(annotation) is typing.Literal:
        parser.add_argument(flag, dest=dest, choices=typing.get_args(annotation), default=None, help=help_text)
    else:
        parse = int if annotation is int else float if annotation is float else str
        parser.add_argument(flag, dest=dest, type=parse, default=None, metavar=name.upper(), help=help_text)


def _without_none(annotation: object) -> object:
    """``X | None`` -> X (an optional field's flag takes X; not given is None anyway)."""
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return annotation


def field_help(info) -> str:
    """A pydantic field's help line: its description, bounds and default (argparse escapes %)."""
    bounds = [f"{symbol} {getattr(rule, attr)}" for rule in info.metadata
              for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(rule, attr, None) is not None]
    default = "" if info.is_required() or info.default is None else f"default {info.default}"
    detail = ", ".join([*bounds, default] if default else bounds)
    description = (info.description or "").rstrip(".")
    return f"{description} ({detail})".replace("%", "%%") if detail else description


def add_model_arguments(parser: argparse.ArgumentParser, model: type[BaseModel], *, only: Iterable[str] | None = None,
                        skip: Iterable[str] = (), rename: Callable[[str], str] | None = None,
                        defaults: typing.Mapping[str, object] | None = None) -> list[str]:
    """One flag per field of the pydantic ``model`` (those in ``only``, but not ``skip``): the CLI side
    of options declared once. ``rename``: the flag's name from the field's (its dest stays the
    field name); ``defaults``: the defaults a command applies instead of the model's, for the help.
    Returns the field names, for ``given_arguments``."""
    names = []
    for name, info in model.model_fields.items():
        if name in skip or (only is not None and name not in only):
            continue
        if defaults and name in defaults:
            info = copy.copy(info)
            info.default = defaults[name]
        flag_name = rename(name) if rename else name
        add_field_argument(parser, flag_name, info.annotation, field_help(info), dest=name)
        names.append(name)
    return names


def given_arguments(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The flags of ``names`` given on the command line (None = not given: the model's default)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


ModelT = typing.TypeVar("ModelT", bound=BaseModel)


def validated_options(model: type[ModelT], values: dict) -> ModelT:
    """``model`` from command-line values: UserError naming the flags (exit 2, one line)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(str(p) for p in error['loc']).replace('_', '-')}: {error['msg']}" if error.get("loc")
            else str(error["msg"]).removeprefix("Value error, ")
            for error in exc.errors()
        )
        raise UserError(problems) from None


def parse_int_list(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise UserError(f"{what}: expected comma-separated integers, got {text!r}") from exc
