"""Reading a user's YAML spec file (sweeps, studies) with one-line errors for every way it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.errors import UserError


def read_yaml_file(path: str | Path, kind: str) -> tuple[Any, Path]:
    """The parsed content of a YAML file and its location; UserError (exit 2 / HTTP 4xx) when it
    is missing, unreadable or not YAML, naming the line of a syntax error. ``kind`` names the file
    in messages ("sweep spec", "study spec")."""
    import yaml

    location = Path(path).expanduser()
    if not location.is_file():
        raise UserError(f"{kind} not found: {location}")
    try:
        return yaml.safe_load(location.read_text(encoding="utf-8")), location
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{location}:{where} malformed YAML ({problem})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{location}: cannot read ({exc})") from exc
