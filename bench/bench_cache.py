"""A throwaway PruneLens cache for a benchmark run, sharing the converted models.

Variants and results a benchmark writes go to a fresh temporary folder (never the user's cache,
never reused from an earlier run), while the embedded checkpoint is linked, not converted again.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def isolated_cache(prefix: str) -> Path:
    """Set PRUNELENS_CACHE_DIR to ``<work>/cache`` and return ``<work>``, a fresh temporary folder
    (the benchmark's own scratch space); ``cache/models`` links PRUNELENS_TEST_SHARED_CACHE/models
    (default ./models_cache/models). Call before importing backend settings."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    shared = Path(os.environ.get("PRUNELENS_TEST_SHARED_CACHE", "models_cache")) / "models"
    (work / "cache").mkdir()
    # On a fresh clone nothing is converted yet: the link must point at a folder that exists,
    # or the first conversion (through the link) cannot create its parent.
    shared.mkdir(parents=True, exist_ok=True)
    (work / "cache" / "models").symlink_to(shared.resolve())
    os.environ["PRUNELENS_CACHE_DIR"] = str(work / "cache")
    return work
