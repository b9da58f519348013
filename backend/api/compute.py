"""The compute lock: one heavy operation on the model at a time, a bounded line of waiters.

Jobs (pruning, evaluation) and heavy requests (NSA) all change or run the same in-memory model:
a prune temporarily rewrites its weights, NSA swaps variants in. They must never overlap, and
on a GPU two of them at once could run out of memory. Heavy requests therefore queue for this
lock; when ``max_waiting`` requests already wait, the next one is refused at once (429), and a
request that waited ``wait_seconds`` gives up (503). Both carry a Retry-After estimate. The job
worker waits without a limit: it already stood in the job queue. Cached reads never touch this.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from backend.jobs import BusyError


class ComputeGate:
    def __init__(self, *, max_waiting: int = 4, wait_seconds: float = 60.0):
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.holder: str | None = None  # what runs now, for /health
        self._held_since: float | None = None
        self._mean_hold_s = 5.0  # moving average of hold times, for Retry-After

    @property
    def waiting(self) -> int:
        return self._waiting

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the holder's expected rest plus the waiters' turns."""
        held_for = time.monotonic() - self._held_since if self._held_since is not None else 0.0
        remaining = max(self._mean_hold_s - held_for, 1.0)
        return int(min(300, math.ceil(remaining + self._waiting * self._mean_hold_s)))

    @contextmanager
    def hold(self, what: str, *, bounded: bool = True) -> Iterator[None]:
        """Run the body alone. ``bounded``: refuse (429) when the line is full, give up after
        ``wait_seconds`` (503); unbounded waits as long as it takes (the job worker)."""
        if bounded:
            with self._count_lock:
                if self._waiting >= self.max_waiting and self._lock.locked():
                    raise BusyError(
                        f"busy: {self._waiting} heavy requests already wait for the model; try again later",
                        retry_after=self.retry_after(),
                        status_code=429,
                    )
                self._waiting += 1
            try:
                acquired = self._lock.acquire(timeout=self.wait_seconds)
            finally:
                with self._count_lock:
                    self._waiting -= 1
            if not acquired:
                raise BusyError(
                    f"busy: the model stayed in use for {self.wait_seconds:g} s ({self.holder or 'a job'}); "
                    "try again later",
                    retry_after=self.retry_after(),
                    status_code=503,
                )
        else:
            self._lock.acquire()
        self.holder, self._held_since = what, time.monotonic()
        try:
            yield
        finally:
            held = time.monotonic() - self._held_since
            self._mean_hold_s = 0.7 * self._mean_hold_s + 0.3 * held
            self.holder, self._held_since = None, None
            self._lock.release()
