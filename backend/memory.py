"""Keep freed memory in the process during layer-by-layer work (Linux with glibc only).

glibc hands large freed blocks back to the kernel (blocks above its mmap threshold are unmapped,
and the top of the heap is trimmed). The pruning engine frees and reallocates the same
activation-sized buffers for every layer, so each new buffer is fresh memory that the kernel
maps and zeroes page by page on first touch: about a million page faults and 15–20% of the wall
time of a SmolLM2 prune on CPU (measured: 2.2 against 2.0 floor units for Wanda). Raising the
two thresholds makes glibc keep and reuse those blocks. The cost: the process keeps its peak
memory instead of returning it. Elsewhere (macOS, musl) this does nothing.

It changes the whole process, so only entry points switch it on, at process start (the
``prunelens`` CLI's ``main``, which also starts ``serve`` and ``demo``; bench scripts), never a
library call.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = (1 << 30) - 1  # blocks up to 1 GiB come from the heap; the heap is not trimmed below 1 GiB free

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse; True when it took effect. Safe to call often."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded in the process
            except (OSError, AttributeError):  # not glibc
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = bool(
                mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
            )
    return _applied
