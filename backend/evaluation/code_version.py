"""The version of the code that produces an evaluation, part of every results-store key.

A hash of the source of the modules whose change can change a stored number: the runner (how
lm-eval is called), the task registry and derived configs, the data sources, the task functions
and our task YAMLs. A result stored by other code is reported as stale and computed again,
never served as current. Comment-only edits change it too: a re-run is cheaper than a wrong table.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# The files (relative to backend/evaluation/) whose content decides the numbers.
EVALUATION_SOURCES = ("runner.py", "registry.py", "sources.py", "task_functions.py", "tasks")


def _source_files() -> list[Path]:
    files: list[Path] = []
    for name in EVALUATION_SOURCES:
        path = _PACKAGE / name
        files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix != ".pyc") if path.is_dir() else [path]
    return files


@cache
def evaluation_code_version() -> str:
    """12 hex digits of SHA-256 over the relative paths and bytes of ``EVALUATION_SOURCES``."""
    digest = hashlib.sha256()
    for path in _source_files():
        digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]
