"""The version of the code that produces an evaluation, part of every results-store key.

A hash of the source of the modules whose change can change a stored number: the runner (how
lm-eval is called), the task registry and derived configs, the data sources, the task functions
and our task YAMLs. A result stored by other code is reported as stale and computed again,
never served as current. Comment-only edits change it too: a re-run is cheaper than a wrong table.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from backend.source_digest import files_digest

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
    return files_digest(_source_files(), _PACKAGE)[:12]
