"""The index's one-pass reduction (backend/neurons/fused.py) against numpy on the full tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.neurons import fused
from backend.neurons.request import HISTOGRAM_BINS, HISTOGRAM_INNER_EDGES

pytestmark = pytest.mark.skipif(fused.njit is None, reason="numba is not installed")


def _batch(positions: int, neurons: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(positions, neurons, generator=generator) * 0.5
    values[::7, ::5] = 0.0  # exact zeros: the underflow bin, never a candidate
    values[3, :] = 300.0  # the overflow bin
    values[5, :] = -1e-30  # below the grid: the underflow bin
    rows = torch.randperm(positions, generator=generator)[: positions - 9].sort().values  # counted positions
    slots = torch.randint(-1, 6, (rows.numel(),), generator=generator)
    bounds = torch.rand(2, neurons, generator=generator) * 1.5 + torch.finfo(torch.float32).tiny
    return values, rows, slots, bounds


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(40, 24), (700, 200)])  # below and above the threaded size
def test_one_pass_equals_numpy(threads, shape):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        positions, neurons = shape
        values, rows, slots, bounds = _batch(positions, neurons, seed=threads)
        dense = torch.randn(positions, neurons, generator=torch.Generator().manual_seed(9))
        sums = {"sum": torch.full((neurons,), 0.5, dtype=torch.float64),  # adds to what is there
                "sum_sq": torch.zeros(neurons, dtype=torch.float64),
                "sum_abs": torch.zeros(neurons, dtype=torch.float64),
                "max": torch.full((neurons,), 250.0), "min": torch.full((neurons,), float("inf")),
                "histogram": torch.ones((neurons, HISTOGRAM_BINS), dtype=torch.int64)}
        profile = torch.zeros((6, neurons), dtype=torch.float64)
        cross = torch.zeros(neurons, dtype=torch.float64)
        capacity = 5
        counts, found = fused.observe_columns(values, rows, slots, bounds, capacity, sums, profile, dense, cross)
    finally:
        torch.set_num_threads(previous)

    counted = values.numpy()[rows.numpy()].astype(np.float64)  # [counted, N]
    np.testing.assert_allclose(sums["sum"].numpy(), 0.5 + counted.sum(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sums["sum_sq"].numpy(), (counted ** 2).sum(0), rtol=1e-12)
    np.testing.assert_allclose(sums["sum_abs"].numpy(), np.abs(counted).sum(0), rtol=1e-12)
    assert np.array_equal(sums["max"].numpy(), np.maximum(250.0, counted.max(0)).astype(np.float32))
    assert np.array_equal(sums["min"].numpy(), counted.min(0).astype(np.float32))
    bins = np.searchsorted(HISTOGRAM_INNER_EDGES, np.abs(values.numpy()[rows.numpy()]), side="right")
    expected = 1 + np.stack([np.bincount(bins[:, n], minlength=HISTOGRAM_BINS) for n in range(neurons)])
    assert np.array_equal(sums["histogram"].numpy(), expected)
    slot_array = slots.numpy()
    for slot in range(6):
        np.testing.assert_allclose(profile[slot].numpy(), counted[slot_array == slot].sum(0), rtol=1e-12, atol=1e-12)
    dense_counted = dense.numpy()[rows.numpy()].astype(np.float64)
    np.testing.assert_allclose(cross.numpy(), (dense_counted * counted).sum(0), rtol=1e-12, atol=1e-9)
    for side, hits in enumerate((counted >= bounds[0].numpy(), -counted >= bounds[1].numpy())):
        assert np.array_equal(counts[side].numpy(), hits.sum(0))
        for neuron in range(neurons):
            listed = np.flatnonzero(hits[:, neuron])[:capacity]
            assert np.array_equal(found[side, neuron, : len(listed)].numpy(), listed)


def test_switch_and_eligibility(monkeypatch):
    values = torch.zeros(4, 3)
    assert fused.enabled(values)
    assert not fused.enabled(values.double())
    assert not fused.enabled(values.t())  # not contiguous rows
    monkeypatch.setenv(fused.ENV_SWITCH, "0")
    assert not fused.enabled(values)
