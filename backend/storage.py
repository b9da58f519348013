"""Atomic folders and files: a result is written beside its target and renamed into place.

Readers list only final folders (staging names start with '.'), so a crash or an error never
leaves a half-written model, variant or file behind where it could be used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.errors import UserError


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``target``; rename it to ``target`` when the block succeeds.

    If ``target`` appeared meanwhile (the same result finished elsewhere first), the existing
    one is kept and the staging folder is discarded.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(target), dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; results are ordinary shared folders
    try:
        yield staging
        if target.exists():
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _staging_prefix(target: Path) -> str:
    return f".{target.name}."


def discard_staging(target: Path) -> None:
    """Remove the staging folders of ``target`` that a process ended mid-write left behind
    (a finished ``target`` is complete and stays)."""
    if target.parent.is_dir():
        for staging in target.parent.glob(f"{_staging_prefix(target)}*"):
            shutil.rmtree(staging, ignore_errors=True)


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
