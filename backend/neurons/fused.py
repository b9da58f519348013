"""One pass over a batch's activations on CPU: every per-neuron sum and the top-k candidates.

The index's per-batch work (``LayerStats.add_tokens``, the cross sums, ``batch_candidates``) is a
dozen torch reductions, each a full pass over the ``[tokens, N]`` activations (25 MB per layer
for the embedded model at 4096 tokens): memory traffic, not arithmetic, so the index cost 1.6-1.7
plain forward passes (docs/neurons.md). ``observe_columns`` reads each activation once and
updates, per neuron: Σa, Σa², Σ|a|, max, min, the |a| histogram, the token-profile sums, the cross
sum Σ a_dense·a_variant, and the batch entries that can still enter the top-k of either side
(score >= the k-th score held, as ``batch_candidates``). It is compiled by numba and runs on
column slices side by side (the slices own disjoint accumulator entries, so no locking).

Sums are accumulated in float64 element by element (the torch path sums a batch in float32 first):
the two paths agree to float32 rounding, and both to numpy on the full tensors (the tests). The
counts, extremes and candidates are exact and identical.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from backend.neurons.request import HISTOGRAM_BINS, HISTOGRAM_BIT_OFFSET

try:  # an optional speed-up: without numba (or on a GPU) the torch path runs
    from numba import njit
except ImportError:  # pragma: no cover - numba is a declared dependency
    njit = None  # type: ignore[assignment]

# "0" turns the fused path off (the torch reductions run instead): for comparisons and benches.
ENV_SWITCH = "PRUNELENS_FUSED_INDEX"
_MAX_WORKERS = 8
_POOL = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="prunelens-fused")


def enabled(activations: torch.Tensor) -> bool:
    """Whether the fused pass can take this batch: numba present, CPU, float32, contiguous rows."""
    return (njit is not None and os.environ.get(ENV_SWITCH, "1") != "0" and activations.device.type == "cpu"
            and activations.dtype == torch.float32 and activations.is_contiguous())


def _kernel(values, bits, rows, slots, column_start, column_end, bound_positive, bound_negative, dense,
            total, total_sq, total_abs, maxima, minima, histogram, profile, cross, counts, candidates):
    """Accumulate columns [column_start, column_end) of ``values[rows]`` (see observe_columns).

    Each row's slice is walked by several short loops (it stays in L1): the sums into local
    arrays, which the compiler knows alias nothing and so vectorizes, then the histogram, the
    profile and the candidates, which branch or scatter."""
    width = column_end - column_start
    capacity = candidates.shape[2]
    use_dense = dense.shape[0] > 0
    row_sum = np.zeros(width)
    row_sum_sq = np.zeros(width)
    row_sum_abs = np.zeros(width)
    row_cross = np.zeros(width)
    high = maxima[column_start:column_end].copy()
    low = minima[column_start:column_end].copy()
    positive = bound_positive[column_start:column_end].copy()
    negative = -bound_negative[column_start:column_end]
    for t in range(rows.shape[0]):
        r = rows[t]
        row = values[r, column_start:column_end]
        for i in range(width):
            a = row[i]
            wide = np.float64(a)
            row_sum[i] += wide
            row_sum_sq[i] += wide * wide
            row_sum_abs[i] += abs(wide)
            high[i] = max(high[i], a)
            low[i] = min(low[i], a)
        row_bits = bits[r, column_start:column_end]
        for i in range(width):
            b = ((row_bits[i] & 0x7FFFFFFF) >> 22) - HISTOGRAM_BIT_OFFSET  # as histogram_bins
            b = min(max(b, 0), HISTOGRAM_BINS - 1)
            histogram[column_start + i, b] += 1
        slot = slots[t]
        if slot >= 0:
            profile_row = profile[slot, column_start:column_end]
            for i in range(width):
                profile_row[i] += row[i]
        if use_dense:
            dense_row = dense[r, column_start:column_end]
            for i in range(width):
                row_cross[i] += np.float64(dense_row[i]) * np.float64(row[i])
        for i in range(width):
            a = row[i]
            if a >= positive[i]:
                j = column_start + i
                c = counts[0, j]
                if c < capacity:
                    candidates[0, j, c] = t
                counts[0, j] = c + 1
            elif a <= negative[i]:
                j = column_start + i
                c = counts[1, j]
                if c < capacity:
                    candidates[1, j, c] = t
                counts[1, j] = c + 1
    for i in range(width):
        j = column_start + i
        total[j] += row_sum[i]
        total_sq[j] += row_sum_sq[i]
        total_abs[j] += row_sum_abs[i]
        cross[j] += row_cross[i]
        maxima[j] = high[i]
        minima[j] = low[i]


_compiled = njit(nogil=True, cache=True)(_kernel) if njit is not None else None


def observe_columns(values: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor, bounds: torch.Tensor,
                    capacity: int, sums: dict[str, torch.Tensor], profile: torch.Tensor | None,
                    dense: torch.Tensor | None, cross: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``values[rows]`` updating ``sums`` in place; returns the candidates.

    ``values`` [positions, N] float32 contiguous; ``rows`` [counted] int64, the positions counted;
    ``slots`` [counted] int64 profile slot of each counted token (-1: none); ``bounds`` [2, N]
    float32, per side the score an entry needs (>= the top-k's k-th score, > 0). ``sums``:
    "sum", "sum_sq", "sum_abs" [N] float64, "max", "min" [N] float32, "histogram" [N, BINS] int64.
    ``profile`` [P, N] float64 (this half's); ``dense`` [positions, N] float32 (the dense model's
    activations of the same batch, same layout as ``values``) and ``cross`` [N] float64 (a
    variant's Σ a_dense·a), or None.
    Returns ``counts`` [2, N] int64 (entries at or above each side's bound) and ``candidates``
    [2, N, capacity] int32: the first ``min(count, capacity)`` counted rows of each, in row order.
    """
    neurons = values.shape[1]
    counts = torch.zeros((2, neurons), dtype=torch.int64)
    candidates = torch.empty((2, neurons, capacity), dtype=torch.int32)
    slot_array = slots.numpy()
    if profile is None:  # no counted token has a slot: the dummy profile row is never touched
        slot_array, profile_array = np.full_like(slot_array, -1), np.zeros((1, neurons), dtype=np.float64)
    else:
        profile_array = profile.numpy()
    # zero rows: the kernel skips the cross sum (its dummy accumulator stays unused)
    dense_array = dense.numpy() if dense is not None else np.zeros((0, 1), dtype=np.float32)
    cross_array = cross.numpy() if cross is not None else np.zeros(neurons, dtype=np.float64)
    inputs = (values.numpy(), values.view(torch.int32).numpy(), rows.numpy(), slot_array)
    outputs = (sums["sum"].numpy(), sums["sum_sq"].numpy(), sums["sum_abs"].numpy(), sums["max"].numpy(),
               sums["min"].numpy(), sums["histogram"].numpy(), profile_array, cross_array, counts.numpy(),
               candidates.numpy())

    def run(span: tuple[int, int]) -> None:
        assert _compiled is not None
        _compiled(*inputs, span[0], span[1], bounds[0].numpy(), bounds[1].numpy(), dense_array, *outputs)

    workers = max(1, min(torch.get_num_threads(), _MAX_WORKERS, neurons // 64))
    edges = np.linspace(0, neurons, workers + 1).astype(int)
    spans = [(int(low), int(high)) for low, high in itertools.pairwise(edges)]
    if workers == 1 or rows.numel() * neurons < 65536:  # small batches: a thread costs more than it saves
        for span in spans:
            run(span)
    else:
        list(_POOL.map(run, spans))
    return counts, candidates
