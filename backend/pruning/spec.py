"""What to prune (SparsitySpec) and the selection rules every method shares.

A spec says how much to remove and in which pattern; the ``lowest_*`` helpers turn a method's
importance metric (``[out, in]``, higher = more important) into a mask (True = pruned) at one of
three granularities: the whole matrix, each output row, or each group of ``m`` consecutive inputs
of a row (N:M). Ties are broken by position (stable sort), so masks are deterministic.

N:M naming follows NVIDIA: ``2:4`` keeps 2 of every 4 consecutive weights of a row. The RIA and
Wanda reference scripts pass ``prune_n`` to ``topk(largest=False)``, i.e. they count the pruned
weights; the two readings only agree when n = m/2 (2:4, 4:8). See docs/pruning-methods.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from backend.errors import UserError

SparsityKind = Literal["unstructured", "nm", "neurons"]


@dataclass(frozen=True)
class SparsitySpec:
    """How much to prune and in which pattern.

    ``ratio`` is the fraction REMOVED (of weights for ``unstructured``, of MLP neurons for
    ``neurons``); for ``nm`` it stays 0 and ``n`` of every ``m`` consecutive inputs are KEPT.
    """

    kind: SparsityKind
    ratio: float = 0.0
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.kind in ("unstructured", "neurons"):
            ratio = _as_ratio(self.ratio, self.kind)
            object.__setattr__(self, "ratio", ratio)
            if self.n or self.m:
                raise UserError(f"{self.kind} sparsity takes a ratio, not n and m")
        elif self.kind == "nm":
            if (
                isinstance(self.n, bool)
                or isinstance(self.m, bool)
                or not (isinstance(self.n, int) and isinstance(self.m, int))
            ):
                raise UserError(f"N:M sparsity needs integer n and m, got {self.n!r}:{self.m!r}")
            if self.n <= 0:
                raise UserError(
                    f"N:M sparsity {self.n}:{self.m}: n (weights kept per group) must be at least 1"
                )
            if self.n >= self.m:
                raise UserError(
                    f"N:M sparsity {self.n}:{self.m}: n (kept) must be smaller than m (group size)"
                )
            if self.ratio:
                raise UserError("N:M sparsity is given by n and m, not by a ratio")
        else:
            raise UserError(f"unknown sparsity kind {self.kind!r}: use unstructured, nm or neurons")

    @classmethod
    def unstructured(cls, ratio: float) -> SparsitySpec:
        return cls("unstructured", ratio=ratio)

    @classmethod
    def nm(cls, n: int, m: int) -> SparsitySpec:
        return cls("nm", n=n, m=m)

    @classmethod
    def neurons(cls, ratio: float) -> SparsitySpec:
        return cls("neurons", ratio=ratio)

    @classmethod
    def parse(cls, text: str) -> SparsitySpec:
        """``"0.5"`` (unstructured), ``"2:4"`` / ``"4:8"`` (N:M, n kept of m), ``"neurons:0.2"``."""
        if not isinstance(text, str) or not text.strip():
            raise UserError("empty sparsity: use a ratio like 0.5, N:M like 2:4, or neurons:0.2")
        cleaned = text.strip().lower()
        if cleaned.startswith("neurons:"):
            return cls.neurons(_parse_float(cleaned.removeprefix("neurons:"), text))
        if ":" in cleaned:
            parts = cleaned.split(":")
            if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
                raise UserError(
                    f"malformed N:M sparsity {text!r}: expected two positive integers like 2:4"
                )
            return cls.nm(int(parts[0]), int(parts[1]))
        return cls.unstructured(_parse_float(cleaned, text))

    @property
    def label(self) -> str:
        """The text ``parse`` reads back to this spec: ``0.5``, ``2:4``, ``neurons:0.2``."""
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        # repr gives the shortest text that round-trips the float exactly.
        return repr(self.ratio) if self.kind == "unstructured" else f"neurons:{self.ratio!r}"

    @property
    def target_sparsity(self) -> float:
        """Fraction of weights (or neurons) this spec removes."""
        return 1.0 - self.n / self.m if self.kind == "nm" else self.ratio


def _parse_float(part: str, original: str) -> float:
    try:
        return float(part)
    except ValueError:
        raise UserError(
            f"sparsity {original!r} is not a number: use e.g. 0.5, 2:4 or neurons:0.2"
        ) from None


def _as_ratio(value, kind: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{kind} sparsity ratio must be a number, got {value!r}")
    ratio = float(value)
    if not (0.0 < ratio < 1.0):  # also rejects NaN
        raise UserError(f"{kind} sparsity ratio {value!r} must be strictly between 0 and 1")
    return ratio


def require_weight_spec(spec: SparsitySpec, method: str) -> None:
    """Weight-level methods take unstructured or N:M specs; neuron specs belong to MI pruning."""
    if spec.kind == "neurons":
        raise UserError(
            f"{method} prunes weights: use a ratio like 0.5 or N:M like 2:4, not {spec.label}"
        )


def pruned_count(total: int, ratio: float) -> int:
    """round(ratio * total), rounding halves up (Python's round() would round them to even)."""
    return min(total, max(0, math.floor(ratio * total + 0.5)))


def per_row_count(in_features: int, ratio: float) -> int:
    """int(in * ratio) as Wanda truncates it, guarded so that 0.29 * 100 gives 29, not 28."""
    return min(in_features, math.floor(in_features * ratio + 1e-9))


# Floats and the integers of their size: zeroing through the integer view is exact (+0.0 bits).
_SAME_SIZE_INTEGER = {torch.float64: torch.int64, torch.float32: torch.int32,
                      torch.float16: torch.int16, torch.bfloat16: torch.int16}


def zero_where(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values.masked_fill_(mask, 0)``, bit for bit (+0.0, NaN included), in place; returns ``values``.

    On CPU masked_fill_ runs at ~2 ns per entry (1.6 ms for a 1536 x 576 matrix, seven times per
    layer in the engine); multiplying the floats' bit patterns, viewed as integers, by the kept
    mask does the same in 0.09 ms (measured 2026-12-08). Float times 0 would leave -0.0 and NaN.
    """
    integer = _SAME_SIZE_INTEGER.get(values.dtype)
    if integer is None or values.device.type != "cpu" or mask.dtype != torch.bool:
        return values.masked_fill_(mask, 0)  # (which also refuses a mask that is not bool)
    values.view(integer).mul_(~mask)
    return values


def lowest_k(metric: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest entries along the last dim.  [..., size] -> [..., size] bool

    The same set as the first ``count`` of a stable sort (ties go to the lowest positions), found
    with ``kthvalue`` (several times faster than sorting on CPU): everything below the count-th
    value, then as many of the entries equal to it as are still needed, leftmost first.
    """
    size = metric.shape[-1]
    if count <= 0:
        return torch.zeros_like(metric, dtype=torch.bool)
    if count >= size:
        return torch.ones_like(metric, dtype=torch.bool)
    if metric.numel() == size >= SAMPLED_SELECTION_MIN and metric.device.type == "cpu":
        # One long row (a whole matrix or block) on CPU; a GPU's kthvalue is fast already and the
        # sampled search would add host syncs.
        threshold = kth_smallest(metric.reshape(-1), count).reshape(*metric.shape[:-1], 1)
    else:
        threshold = torch.kthvalue(metric, count, dim=-1, keepdim=True).values  # [..., 1]
    at_most = metric <= threshold
    if bool((at_most.sum(dim=-1) == count).all()):  # no surplus ties at the threshold (the rule)
        return at_most
    below = metric < threshold
    tied = metric == threshold
    still_needed = count - below.sum(dim=-1, keepdim=True)  # [..., 1], >= 1
    return below | (tied & (tied.cumsum(dim=-1) <= still_needed))


# kthvalue on one long row runs on one core at ~10 ns per entry: a SparseGPT block of 128 columns
# of a 1536-row matrix costs 3 ms, hundreds of times per model. Above this size, kth_smallest
# narrows the search with a sample first.
SAMPLED_SELECTION_MIN = 32768
_SAMPLE_SIZE = 4096


def kth_smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest entry (1-based) of a 1-D tensor, exactly, as a 0-d tensor.

    A random sample (fixed seed) gives two values that bracket the k-th smallest with a margin of
    six standard deviations of the sample's rank; one pass counts the entries below the bracket,
    and kthvalue runs only on the few inside it. The answer is checked (the bracket must hold the
    k-th entry) and, if the sample misled, computed over everything: the result never depends on
    the sample, only the time does.
    """
    size = values.numel()
    if size < SAMPLED_SELECTION_MIN:
        return torch.kthvalue(values, k).values
    low, high = _sample_bracket(values, k)
    inside = torch.ones_like(values, dtype=torch.bool)
    below = 0
    if low is not None:
        under = values < low
        below = int(under.sum())
        inside &= ~under
    if high is not None:
        inside &= values <= high
    candidates = values[inside]
    if below < k <= below + candidates.numel():
        return torch.kthvalue(candidates, k - below).values
    return torch.kthvalue(values, k).values  # the sample missed (rare)


def _sample_bracket(
    values: torch.Tensor, k: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Two sample values that the k-th smallest lies between, almost surely (None: unbounded)."""
    size = values.numel()
    generator = torch.Generator(device=values.device).manual_seed(size + k)
    picks = torch.randint(size, (_SAMPLE_SIZE,), generator=generator, device=values.device)
    sample = values[picks]
    fraction = k / size
    expected = fraction * _SAMPLE_SIZE
    margin = 6.0 * math.sqrt(_SAMPLE_SIZE * fraction * (1.0 - fraction)) + 2.0
    low_rank, high_rank = math.floor(expected - margin), math.ceil(expected + margin)
    low = torch.kthvalue(sample, low_rank).values if low_rank >= 1 else None
    high = torch.kthvalue(sample, high_rank).values if high_rank <= _SAMPLE_SIZE else None
    return low, high


def lowest_in_matrix(metric: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` smallest entries of the whole matrix.  [out, in] -> [out, in]"""
    return lowest_k(metric.reshape(1, -1), count).view_as(metric)


def lowest_per_row(metric: torch.Tensor, count_per_row: int) -> torch.Tensor:
    """Mask of the ``count_per_row`` smallest entries of each row.  [out, in] -> [out, in]"""
    return lowest_k(metric, count_per_row)


def lowest_per_group(metric: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M mask: in each group of ``m`` consecutive inputs of a row, prune the ``m - n`` smallest.

    metric: [out, in] with in divisible by m -> mask [out, in]
    """
    require_divisible(metric.shape[1], m)
    rows, columns = metric.shape
    return lowest_k(metric.reshape(rows, columns // m, m), m - n).reshape(rows, columns)


def require_divisible(in_features: int, m: int) -> None:
    if in_features % m:
        raise UserError(
            f"N:M sparsity needs input features divisible by m: "
            f"{in_features} is not a multiple of {m}"
        )


def mask_for_spec(metric: torch.Tensor, spec: SparsitySpec, *, per_row: bool) -> torch.Tensor:
    """The mask of ``spec`` from a metric: N:M per group, otherwise per row or per matrix.

    Per row prunes ``per_row_count(in, ratio)`` of each row (Wanda's rule); per matrix prunes
    ``round(ratio * numel)`` of the whole matrix.
    """
    if spec.kind == "nm":
        return lowest_per_group(metric, spec.n, spec.m)
    if per_row:
        return lowest_per_row(metric, per_row_count(metric.shape[1], spec.ratio))
    return lowest_in_matrix(metric, pruned_count(metric.numel(), spec.ratio))
