"""Streaming statistics of one linear layer's input over the calibration tokens.

The pruning methods need, per input feature j of a layer: the activation norm ``||X_j||_2``
(Wanda, RIA), the Hessian of the layer-wise squared error ``H = 2 X X^T / n`` (SparseGPT) and,
for the MLP down projection, the covariance and mean of the neurons (MI neuron pruning).
Tokens arrive in batches; nothing of size [tokens, in] is kept.
"""

from __future__ import annotations

import torch

# The Hessian X^T X is symmetric: accumulating it by column blocks, only the blocks on and above the
# diagonal, costs (k + 1) / 2k of the full product for k blocks (7/12 for SmolLM2's 1536 MLP
# neurons in blocks of 256) and stays one large matrix product per block. The lower blocks are
# mirrored on read.
GRAM_BLOCK = 256


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
    ) -> None:
        if skip_leading < 0:
            raise ValueError(f"skip_leading must be >= 0, got {skip_leading}")
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
        # Sum of the inputs (cheap, [in]): the mean without the covariance (DSnoT's E[X_j]).
        self._sum = torch.zeros(in_features, dtype=torch.float32, device=self.device)  # [in]
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
        if self.skip_leading:
            if x.dim() < 2:
                raise ValueError(f"skip_leading needs inputs [..., seq, in], got shape {tuple(x.shape)}")
            x = x[..., self.skip_leading :, :]
        batch = (
            x.detach().reshape(-1, self.in_features).to(device=self.device, dtype=torch.float32)
        )  # [tokens, in]
        added = batch.shape[0]
        if added == 0:
            return
        previous = self.tokens
        total = previous + added
        self._sum += batch.sum(dim=0)
        if self._sum_squares is not None:
            self._sum_squares += (batch * batch).sum(dim=0)
        if self._hessian is not None:
            # Running average as SparseGPT keeps it: rescale the old mean, add the new scaled
            # batch; the entries stay O(x^2) however many tokens arrive, so float32 suffices.
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

    def _add_upper_gram(self, batch: torch.Tensor, alpha: float) -> None:
        """H += alpha batch^T batch, computing only the column blocks on and above the diagonal."""
        size, hessian = self.in_features, self._hessian
        assert hessian is not None, "only called when the Hessian is collected"
        if size <= GRAM_BLOCK:
            hessian.addmm_(batch.T, batch, alpha=alpha)
            return
        for start in range(0, size, GRAM_BLOCK):
            end = min(start + GRAM_BLOCK, size)
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
            for start in range(GRAM_BLOCK, self.in_features, GRAM_BLOCK):
                self._hessian[start:, start - GRAM_BLOCK : start] = self._hessian[
                    start - GRAM_BLOCK : start, start:
                ].T
            self._hessian_lower_stale = False
        return self._hessian

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance (divided by n) of the inputs: [in, in], float32."""
        if self._centered_outer is None:
            raise RuntimeError("InputStatistics was created without covariance=True")
        return self._centered_outer / max(self.tokens, 1)

    @property
    def mean(self) -> torch.Tensor:
        """Mean input over all tokens seen: [in], float32."""
        if self._mean is None:
            return self._sum / max(self.tokens, 1)
        return self._mean
