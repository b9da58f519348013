"""One digest of source files, for cache keys that must change whenever the code that computes
a stored result changes (evaluation results, NSA results)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def files_digest(files: Iterable[Path], root: Path) -> str:
    """SHA-256 hex digest over each file's path relative to ``root`` and its bytes, in the given
    order (callers sort); renaming, adding or editing a file changes it."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
