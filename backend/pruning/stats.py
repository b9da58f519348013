"""Streaming statistics of one linear layer's input over the calibration tokens.

The pruning methods need, per input feature j of a layer: the activation norm ``||X_j||_2``
(Wanda, RIA), the Hessian of the layer-wise squared error ``H = 2 X X^T / n`` (SparseGPT) and,
for the MLP down projection, the covariance and mean of the neurons (MI neuron pruning).
Tokens arrive in batches; nothing of size [tokens, in] is kept.

With ``folds`` K > 0 the covariance and mean are also kept per fold of calibration windows
(window w goes to fold w mod K, in arrival order): what a method needs to validate a fit on
windows it was not fitted on (the neuron fold-in's ridge, backend/pruning/fold_in_validation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The Hessian X^T X is symmetric: accumulating it by column blocks, only the blocks on and above the
# diagonal, costs (k + 1) / 2k of the full product for k blocks and stays one large matrix product
# per block. The lower blocks are mirrored on read. Block widths measured on 4096 tokens (CPU,
# 2026-12-08): 576 inputs 9.0 ms in blocks of 128 against 9.9 ms in 256 and 13.5 ms for the full
# product; 1536 inputs 64 ms in 256 against 70 ms in 128 and 93 ms full.
GRAM_BLOCK = 256
NARROW_GRAM_BLOCK = 128
NARROW_INPUTS = 768  # up to this many inputs, blocks of NARROW_GRAM_BLOCK


def gram_block(in_features: int) -> int:
    """The column block of the upper-block Hessian accumulation for this many inputs."""
    return NARROW_GRAM_BLOCK if in_features <= NARROW_INPUTS else GRAM_BLOCK


@dataclass(frozen=True)
class Moments:
    """Covariance (divided by n) [in, in], mean [in] and token count of one set of tokens."""

    covariance: torch.Tensor
    mean: torch.Tensor
    tokens: int


def pooled(parts: list[Moments]) -> Moments:
    """The moments of the union of disjoint token sets (Chan et al.'s pairwise combination)."""
    tokens = sum(part.tokens for part in parts)
    if tokens == 0:
        return Moments(torch.zeros_like(parts[0].covariance), torch.zeros_like(parts[0].mean), 0)
    mean = torch.zeros_like(parts[0].mean)
    for part in parts:
        mean += part.mean * (part.tokens / tokens)
    scatter = torch.zeros_like(parts[0].covariance)
    for part in parts:
        if part.tokens:
            offset = part.mean - mean
            scatter += part.covariance * part.tokens
            scatter.addr_(offset, offset, alpha=float(part.tokens))
    return Moments(scatter / tokens, mean, tokens)


class InputStatistics:
    """Accumulates statistics of ``x: [..., in_features]`` batches, in float32 on ``device``."""

    def __init__(
        self,
        in_features: int,
        device: torch.device | str,
        *,
        hessian: bool = False,
        covariance: bool = False,
        skip_leading: int = 0,
        folds: int = 0,
        mean: bool = True,
    ) -> None:
        if skip_leading < 0:
            raise ValueError(f"skip_leading must be >= 0, got {skip_leading}")
        if folds < 0 or (folds and not covariance):
            raise ValueError(f"folds ({folds}) must be >= 0 and need covariance=True")
        self.in_features = in_features
        # Positions 0..k-1 of every window are left out: the attention-sink token (position 0)
        # can carry ~all of a neuron's squared activation (docs/pitfalls.md, attention sinks).
        self.skip_leading = skip_leading
        self.device = torch.device(device)
        self.tokens = 0
        # With a Hessian, sum_t x_tj^2 is its diagonal times n / 2: not accumulated twice.
        self._sum_squares = (
            None if hessian else torch.zeros(in_features, dtype=torch.float32, device=self.device)
        )  # [in]
        self._hessian = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=self.device)
            if hessian
            else None
        )
        self._hessian_lower_stale = False
        # Sum of the inputs ([in]): the mean without the covariance (DSnoT's E[X_j]). Off when no
        # method reads it (``mean=False``, the engine's default): a full pass over every batch.
        self._sum = torch.zeros(in_features, dtype=torch.float32, device=self.device) if mean else None  # [in]
        self._mean = (
            torch.zeros(in_features, dtype=torch.float32, device=self.device)
            if covariance
            else None
        )
        # Sum of outer products of deviations from the running mean (Chan et al.'s pairwise update).
        self._centered_outer = (
            torch.zeros(in_features, in_features, dtype=torch.float32, device=self.device)
            if covariance
            else None
        )
        # Per fold of windows instead of one running covariance: the total is their pooled moments.
        self._fold_parts = [InputStatistics(in_features, device, covariance=True) for _ in range(folds)]
        self._windows = 0
        if folds:
            self._mean = self._centered_outer = None

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs: x [..., in_features], any leading dims (flattened to tokens).

        With ``skip_leading`` k > 0, x is [..., seq, in_features] (one window per row of the
        leading dims) and the first k positions of each window are not counted.
        """
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected inputs with {self.in_features} features, got shape {tuple(x.shape)}"
            )
        if (self.skip_leading or self._fold_parts) and x.dim() < 2:
            raise ValueError(f"skip_leading and folds need inputs [..., seq, in], got shape {tuple(x.shape)}")
        if self.skip_leading:
            x = x[..., self.skip_leading :, :]
        if self._fold_parts and x.numel():
            self._update_folds(x.detach().reshape(-1, *x.shape[-2:]))  # [windows, seq, in]
        batch = (
            x.detach().reshape(-1, self.in_features).to(device=self.device, dtype=torch.float32)
        )  # [tokens, in]
        added = batch.shape[0]
        if added == 0:
            return
        previous = self.tokens
        total = previous + added
        if self._sum is not None:
            self._sum += batch.sum(dim=0)
        if self._sum_squares is not None:
            self._sum_squares += torch.linalg.vecdot(batch, batch, dim=0)  # Σ x², no [tokens, in] square
        if self._hessian is not None:
            # Running average as SparseGPT keeps it: rescale the old mean, add the new scaled
            # batch; the entries stay O(x^2) however many tokens arrive, so float32 suffices.
            if previous:  # (the first batch finds zeros: no pass over [in, in] to scale them)
                self._hessian.mul_(previous / total)
            self._add_upper_gram(batch, alpha=2.0 / total)
        if self._mean is not None and self._centered_outer is not None:
            batch_mean = batch.mean(dim=0)  # [in]
            centered = batch - batch_mean
            delta = batch_mean - self._mean
            self._centered_outer.addmm_(centered.T, centered)
            self._centered_outer.addr_(delta, delta, alpha=previous * added / total)
            self._mean.add_(delta, alpha=added / total)
        self.tokens = total

    def _update_folds(self, windows: torch.Tensor) -> None:
        """Window w (counted over all batches) into fold w mod K.  windows [windows, seq, in]"""
        count = len(self._fold_parts)
        order = (torch.arange(windows.shape[0]) + self._windows) % count
        for fold, part in enumerate(self._fold_parts):
            chosen = torch.nonzero(order == fold).squeeze(1)
            if chosen.numel():
                part.update(windows[chosen.to(windows.device)])
        self._windows += windows.shape[0]

    def fold_moments(self) -> list[Moments]:
        """Each fold's moments (empty without ``folds``); folds without windows have 0 tokens."""
        return [Moments(part.covariance, part.mean, part.tokens) for part in self._fold_parts]

    def _add_upper_gram(self, batch: torch.Tensor, alpha: float) -> None:
        """H += alpha batch^T batch, computing only the column blocks on and above the diagonal."""
        size, hessian = self.in_features, self._hessian
        assert hessian is not None, "only called when the Hessian is collected"
        block = gram_block(size)
        if size <= block:
            hessian.addmm_(batch.T, batch, alpha=alpha)
            return
        for start in range(0, size, block):
            end = min(start + block, size)
            hessian[start:end, start:].addmm_(
                batch[:, start:end].T, batch[:, start:], alpha=alpha
            )
        self._hessian_lower_stale = True

    @property
    def act_norm(self) -> torch.Tensor:
        """||X_j||_2 over all tokens seen: [in], float32."""
        if self._sum_squares is None:
            assert self._hessian is not None, "one of the two is always collected"
            return (torch.diagonal(self._hessian) * (self.tokens / 2.0)).sqrt()
        return self._sum_squares.sqrt()

    @property
    def hessian(self) -> torch.Tensor:
        """2 X X^T / n over all tokens seen (X = [in, tokens]): [in, in], float32."""
        if self._hessian is None:
            raise RuntimeError("InputStatistics was created without hessian=True")
        if self._hessian_lower_stale:
            block = gram_block(self.in_features)
            for start in range(block, self.in_features, block):
                self._hessian[start:, start - block : start] = self._hessian[start - block : start, start:].T
            self._hessian_lower_stale = False
        return self._hessian

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance (divided by n) of the inputs: [in, in], float32."""
        if self._fold_parts:
            return pooled(self.fold_moments()).covariance
        if self._centered_outer is None:
            raise RuntimeError("InputStatistics was created without covariance=True")
        return self._centered_outer / max(self.tokens, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean input over all tokens seen: [in], float32."""
        if self._fold_parts:
            return pooled(self.fold_moments()).mean
        if self._mean is not None:
            return self._mean
        if self._sum is None:
            raise RuntimeError("InputStatistics was created with mean=False")
        return self._sum / max(self.tokens, 1)
