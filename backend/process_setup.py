"""Process-wide settings, made once when a process starts (the CLI, ``serve``, ``demo``, a Ray
worker through its runtime_env, the test session) and never inside a library call."""

from __future__ import annotations

import os

# Environment variables that libraries read at call time. setdefault: a value the user exported
# wins. DISABLE_MULTIPROC: lm-eval's bootstrap stderr (f1, mcc) otherwise forks a process pool
# per metric - from an API server's threads or a Ray worker that is asking for trouble, and
# 1000 resamples take well under a second in-process.
PROCESS_ENVIRONMENT: dict[str, str] = {"DISABLE_MULTIPROC": "1"}


def configure_process() -> None:
    """Apply ``PROCESS_ENVIRONMENT`` and the allocator setting to this process (idempotent)."""
    from backend.memory import keep_freed_memory

    # glibc keeps freed activation buffers for reuse instead of re-faulting them layer after
    # layer (docs/pitfalls.md); it changes the whole process, so only here, at process start.
    keep_freed_memory()
    for key, value in PROCESS_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
