"""Atomic folders: a result is written to a staging folder and renamed into place when complete.

Readers list only final folders (staging names start with '.'), so a crash or an error never
leaves a half-written model or variant behind where it could be used.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
