"""keep_freed_memory: a freed large buffer is reused, not handed back to the kernel and re-faulted."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from backend.memory import keep_freed_memory

BUFFER_BYTES = 48 << 20  # above glibc's largest dynamic mmap threshold (32 MiB on 64-bit)


def _page_faults_of_one_buffer() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = torch.empty(BUFFER_BYTES // 4)
    buffer.fill_(1.0)  # writes every page
    del buffer
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_a_freed_buffer_is_reused_without_page_faults():
    assert keep_freed_memory() and keep_freed_memory()  # applied, and idempotent
    pages = BUFFER_BYTES // 4096
    # Without it every buffer costs ~12k faults. With it glibc reuses the block once earlier
    # blocks (placed before the setting) are out of the way: within a few allocations.
    faults = [_page_faults_of_one_buffer() for _ in range(8)]
    assert min(faults[2:]) < pages // 20, faults
