"""Protected neurons: keep (or favour) the weights of chosen MLP neurons while a layer still reaches
exactly its target sparsity.

A ``Protection`` names neurons per decoder layer (``layer -> neuron indices``; a neuron is column j
of the down projection, see docs/ARCHITECTURE), a mode and, for ``upweight``, a factor. Per
prunable linear of a layer it gives a ``WeightGuard``: a boolean ``[out, in]`` mask of the protected
weights — the protected neurons' rows in the MLP input projections (gate/up, OPT's fc1) and their
columns in the output projection (down, fc2). Attention projections have no protected weights.

Modes (docs/guided-pruning.md):

- ``keep``: protected weights are chosen last. Every row, group or matrix prunes exactly the count
  it prunes without protection; the quota falls on unprotected weights. Where a selection unit has
  fewer unprotected weights than its quota, its least salient protected weights are pruned (never
  an error: an N:M group must stay valid, and an unstructured matrix must reach its sparsity); the
  manifest counts such weights (``protected_weights_pruned``). For per-row methods (Wanda, RIA
  per output) a fully protected row (a protected neuron's gate/up row) moves its quota to the
  unprotected rows of the same matrix, spread as evenly as possible (rows differ by at most one).
- ``upweight``: the method's saliency of protected weights is multiplied by ``factor`` (default
  10) before the usual selection; they are pruned only where even the boosted saliency is among
  the lowest.

Selection rules are the ones of ``backend.pruning.spec`` (ties by position), so a guard with no
protected weight gives the unprotected mask bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from backend.errors import UserError
from backend.pruning.spec import (
    SparsitySpec,
    lowest_k,
    mask_for_spec,
    per_row_count,
    pruned_count,
    require_divisible,
)

ProtectionMode = Literal["keep", "upweight"]
PROTECTION_MODES: tuple[str, ...] = ("keep", "upweight")
DEFAULT_UPWEIGHT_FACTOR = 10.0
FACTOR_RANGE = (1.0, 1e6)


@dataclass(frozen=True)
class WeightGuard:
    """The protected weights of one linear: ``protected`` [out, in] bool (True = protected)."""

    protected: torch.Tensor
    mode: ProtectionMode = "keep"
    factor: float = DEFAULT_UPWEIGHT_FACTOR

    def transposed(self) -> WeightGuard:
        """The same guard in ``[in, out]`` layout (SparseGPT works on Wᵀ)."""
        return WeightGuard(self.protected.t(), self.mode, self.factor)

    def columns(self, low: int, high: int) -> WeightGuard:
        return WeightGuard(self.protected[:, low:high], self.mode, self.factor)

    def rows(self, low: int, high: int) -> WeightGuard:
        return WeightGuard(self.protected[low:high], self.mode, self.factor)


def active(guard: WeightGuard | None) -> bool:
    """A guard that protects at least one weight (an empty one changes nothing)."""
    return guard is not None and bool(guard.protected.any())


def check_mode(mode: str, factor: float) -> None:
    if mode not in PROTECTION_MODES:
        raise UserError(f"unknown protection mode {mode!r}: use keep or upweight")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor) \
            or not FACTOR_RANGE[0] <= factor <= FACTOR_RANGE[1]:
        raise UserError(f"protection factor must be a number in [{FACTOR_RANGE[0]:g}, {FACTOR_RANGE[1]:g}], "
                        f"got {factor!r}")


@dataclass(frozen=True)
class Protection:
    """Which neurons to protect, per decoder layer, and how; ``source`` says who chose them.

    ``neurons``: layer -> sorted distinct neuron indices. ``source`` goes into the manifest, not
    into the variant's identity: the identity is what is protected (a digest of the neurons), the
    mode and (for upweight) the factor, so two sources naming the same neurons give one variant.
    """

    neurons: Mapping[int, tuple[int, ...]]
    mode: ProtectionMode = "keep"
    factor: float = DEFAULT_UPWEIGHT_FACTOR
    source: dict = field(default_factory=dict)

    @classmethod
    def create(cls, neurons: Mapping[int, Iterable[int]], mode: str = "keep",
               factor: float = DEFAULT_UPWEIGHT_FACTOR, source: dict | None = None) -> Protection:
        check_mode(mode, factor)
        cleaned: dict[int, tuple[int, ...]] = {}
        for layer, indices in neurons.items():
            chosen = tuple(sorted({int(index) for index in indices}))
            if int(layer) < 0 or (chosen and chosen[0] < 0):
                raise UserError(f"protected neuron indices must be non-negative (layer {layer})")
            if chosen:
                cleaned[int(layer)] = chosen
        return cls(dict(sorted(cleaned.items())), mode, float(factor), dict(source or {}))  # type: ignore[arg-type]

    @property
    def count(self) -> int:
        return sum(len(indices) for indices in self.neurons.values())

    @property
    def empty(self) -> bool:
        return self.count == 0

    def per_layer_counts(self) -> dict[int, int]:
        return {layer: len(indices) for layer, indices in self.neurons.items()}

    def digest(self) -> str:
        canonical = json.dumps({str(layer): list(indices) for layer, indices in self.neurons.items()})
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def identity(self) -> dict | None:
        """The part of a variant's identity; None for an empty protection (= no protection)."""
        if self.empty:
            return None
        return {"mode": self.mode, "factor": self.factor if self.mode == "upweight" else None,
                "neurons": self.digest(), "count": self.count}

    def describe(self) -> dict:
        """What the manifest records: identity, source, counts per layer and the neurons."""
        return {**(self.identity() or {}), "source": self.source,
                "per_layer": {str(layer): count for layer, count in self.per_layer_counts().items()},
                "neuron_indices": {str(layer): list(indices) for layer, indices in self.neurons.items()}}

    def check_fits(self, layer_count: int, neuron_count: int) -> None:
        for layer, indices in self.neurons.items():
            if layer >= layer_count:
                raise UserError(f"protection names layer {layer}, the model has {layer_count} layers")
            if indices and indices[-1] >= neuron_count:
                raise UserError(f"protection names neuron {indices[-1]} of layer {layer}, "
                                f"the model has {neuron_count} neurons per layer")

    def layer_guards(self, index: int, linears: Mapping[str, nn.Module], mlp_inputs: Iterable[str],
                     mlp_output: str, weight_of) -> dict[str, WeightGuard] | None:
        """Per linear of decoder layer ``index``, its guard; None when the layer has no protected neuron.

        ``weight_of(name)`` gives the ``[out, in]`` weight (for shape and device)."""
        indices = self.neurons.get(index)
        if not indices:
            return None
        chosen = torch.tensor(indices, dtype=torch.long)
        guards = {}
        for name in linears:
            weight = weight_of(name)
            protected = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
            if name == mlp_output:
                protected[:, chosen.to(weight.device)] = True
            elif name in tuple(mlp_inputs):
                protected[chosen.to(weight.device), :] = True
            guards[name] = WeightGuard(protected, self.mode, self.factor)
        return guards


# ----------------------------------------------------------------------------- guarded selection


def upweighted(metric: torch.Tensor, guard: WeightGuard) -> torch.Tensor:
    """The saliency with protected entries multiplied by the factor.  [..] -> [..] float32"""
    return torch.where(guard.protected, metric * guard.factor, metric)


def lowest_protected_last(metric: torch.Tensor, counts: torch.Tensor | int,
                          protected: torch.Tensor) -> torch.Tensor:
    """Mask of ``counts`` entries along the last dim: the lowest unprotected ones first, then (only
    if a slice has too few) its lowest protected ones.  metric, protected: [..., size] -> [..., size]

    ``counts``: an int or a tensor [..., 1] (a count per slice). Order = protected last, then by
    metric, then by position (a stable sort): without protection this is ``lowest_k``'s set.
    """
    by_metric = torch.sort(metric, dim=-1, stable=True).indices  # [..., size]
    protected_in_order = protected.gather(-1, by_metric).to(torch.uint8)
    order = by_metric.gather(-1, torch.sort(protected_in_order, dim=-1, stable=True).indices)
    size = metric.shape[-1]
    positions = torch.arange(size, device=metric.device).expand_as(metric)
    counts_tensor = torch.as_tensor(counts, device=metric.device)
    chosen = positions < counts_tensor  # [..., size]: the first `count` entries of the order
    mask = torch.zeros_like(metric, dtype=torch.bool)
    return mask.scatter_(-1, order, chosen)


def guarded_lowest_k(metric: torch.Tensor, count: int, guard: WeightGuard | None) -> torch.Tensor:
    """``lowest_k`` along the last dim under a guard of the same shape (unguarded if inactive)."""
    if not active(guard):
        return lowest_k(metric, count)
    assert guard is not None
    if guard.mode == "upweight":
        return lowest_k(upweighted(metric, guard), count)
    return lowest_protected_last(metric, count, guard.protected)


def _water_fill(counts: torch.Tensor, capacity: torch.Tensor, deficit: int) -> int:
    """Add ``deficit`` to ``counts`` (in place) without passing ``capacity``; returns what is left."""
    while deficit > 0:
        room = capacity - counts
        open_rows = torch.nonzero(room > 0).flatten()
        if open_rows.numel() == 0:
            break
        share = deficit // open_rows.numel()
        if share == 0:
            counts[open_rows[:deficit]] += 1
            deficit = 0
            break
        added = torch.clamp(room[open_rows], max=share)
        counts[open_rows] += added
        deficit -= int(added.sum())
    return deficit


def per_row_counts(protected: torch.Tensor, quota: int) -> torch.Tensor:
    """Pruned count of each row under ``keep``: [out, in] -> [out, 1]; sums to quota * out."""
    rows, columns = protected.shape
    counts = torch.full((rows,), quota, dtype=torch.long, device=protected.device)
    unprotected = (~protected).sum(dim=1)
    if bool((unprotected >= quota).all()):
        return counts.unsqueeze(1)
    counts = torch.minimum(counts, unprotected)
    left = _water_fill(counts, unprotected, quota * rows - int(counts.sum()))
    _water_fill(counts, torch.full_like(counts, columns), left)  # protected ones, only if unavoidable
    return counts.unsqueeze(1)


def guarded_mask_for_spec(metric: torch.Tensor, spec: SparsitySpec, guard: WeightGuard | None, *,
                          per_row: bool) -> torch.Tensor:
    """``mask_for_spec`` under a guard.  metric [out, in] -> mask [out, in] (True = pruned)

    Same counts as without protection: N:M prunes m - n of every group; per row the matrix total
    stays out * per_row_count (spread by ``per_row_counts``); per matrix round(ratio * numel).
    """
    if not active(guard):
        return mask_for_spec(metric, spec, per_row=per_row)
    assert guard is not None
    if guard.protected.shape != metric.shape:
        raise ValueError(f"guard {tuple(guard.protected.shape)} does not match weight {tuple(metric.shape)}")
    if guard.mode == "upweight":
        return mask_for_spec(upweighted(metric, guard), spec, per_row=per_row)
    rows, columns = metric.shape
    if spec.kind == "nm":
        require_divisible(columns, spec.m)
        grouped = metric.reshape(rows, columns // spec.m, spec.m)
        return lowest_protected_last(grouped, spec.m - spec.n,
                                     guard.protected.reshape(grouped.shape)).reshape(rows, columns)
    if per_row:
        counts = per_row_counts(guard.protected, per_row_count(columns, spec.ratio))
        return lowest_protected_last(metric, counts, guard.protected)
    count = pruned_count(metric.numel(), spec.ratio)
    return lowest_protected_last(metric.reshape(1, -1), count, guard.protected.reshape(1, -1)).view_as(metric)
