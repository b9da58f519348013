"""The fold-in's ridge chosen by K-fold validation over calibration windows, or mean-only compensation.

The least-squares fold-in (neuron_math.fold_in) replaces the removed neurons h_R by ``Bᵀ h_S``
fitted on the calibration tokens, ``B = (H_SS + λI)⁻¹ H_SR``. With few tokens per neuron, or text
of another kind at deployment, the fit can reproduce the calibration text's quirks rather than
the neurons' relation; FLAP's mean-only compensation (the removed neurons' mean into the bias)
cannot overfit that way. So λ is chosen where it predicts best on windows it was not fitted on:

    for each fold k of the calibration windows (InputStatistics with ``folds``):
        fit B_k(λ) on the other folds, measure Σ_{t in fold k} ‖W_R (h_R - B_k(λ)ᵀ h_S) - c_k‖²

summed over the folds, for every λ of ``RIDGE_GRID`` (relative: λ = α · mean(diag H), as SparseGPT
dampens) and for λ = ∞, where B = 0: mean-only compensation where the down projection has a bias
(the intercept is then the removed neurons' mean, FLAP's correction), plain removal where it has
none (LLaMA). The smallest validation error wins; the final fit uses all windows with that α.

Held-out error from moments alone (no tokens kept): with ``Q = W_Rᵀ W_R`` [removed, removed] and
``G`` the held-out fold's Gram (around the training mean in the affine case),

    error = Tr(Q G_RR) - 2 Tr(Q Bᵀ G_SR) + Tr(Q Bᵀ G_SS B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from backend.pruning import neuron_math
from backend.pruning.stats import Moments, pooled

# Relative ridges α tried (λ = α · mean diag of the training Gram), one per decade, plus ∞ (no fit).
# A coarse grid: each point costs one Cholesky solve per fold; the validation curve is flat
# within a decade compared with the gap between folding in and not.
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass(frozen=True)
class RidgeChoice:
    """The validated ridge: ``alpha`` (None = ∞: no fold-in) and the summed held-out errors."""

    alpha: float | None
    errors: dict[str, float]  # f"{alpha:g}" or "inf" -> summed validation error over the folds
    folds: int

    def note(self) -> dict:
        """What the manifest records for one layer (method_notes)."""
        best = self.errors["inf" if self.alpha is None else f"{self.alpha:g}"]
        return {"fold_in_ridge": self.alpha,
                "compensation": "mean-only" if self.alpha is None else "fold-in",
                "validation_folds": self.folds,
                "validation_error": best,
                "validation_error_mean_only": self.errors["inf"]}


def _grams(train: Moments, held_out: Moments, affine: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(training Gram, held-out Gram) [n, n] float64: centred on the training mean if ``affine``."""
    train_cov, held_cov = train.covariance.double(), held_out.covariance.double()
    train_mean, held_mean = train.mean.double(), held_out.mean.double()
    if affine:  # the intercept is fitted on the training fold: its mean is the centre of both
        offset = held_mean - train_mean
        return train_cov * train.tokens, (held_cov + torch.outer(offset, offset)) * held_out.tokens
    return (neuron_math.neuron_gram(train_cov, train_mean, train.tokens),
            neuron_math.neuron_gram(held_cov, held_mean, held_out.tokens))


def held_out_errors(weight: torch.Tensor, train_gram: torch.Tensor, held_gram: torch.Tensor,
                    removed: torch.Tensor, alphas: tuple[float, ...]) -> dict[str, float]:
    """Output error on the held-out tokens of the fold-in fitted on ``train_gram``, per α and ∞.

    weight [out, n], grams [n, n] (float64), removed LongTensor [r] -> {"α": error, "inf": error}.
    """
    neurons = weight.shape[1]
    is_removed = torch.zeros(neurons, dtype=torch.bool, device=weight.device)
    is_removed[removed] = True
    kept, gone = torch.nonzero(~is_removed).squeeze(1), torch.nonzero(is_removed).squeeze(1)
    w_removed = weight[:, gone].double()  # [out, r]
    q = w_removed.T @ w_removed  # [r, r]
    held_kept = held_gram[kept]  # [s, n]
    constant = float((q * held_gram[gone][:, gone]).sum())  # B = 0: the error of no fold-in
    errors = {"inf": constant}
    system = train_gram[kept][:, kept]  # [s, s]
    right = train_gram[kept][:, gone]  # [s, r]
    level = neuron_math.ridge(train_gram, 1.0)
    eye = torch.eye(kept.numel(), dtype=system.dtype, device=system.device)
    for alpha in alphas:
        factor, info = torch.linalg.cholesky_ex(system + alpha * level * eye)
        if int(info) != 0:  # not positive definite at this ridge: not a candidate
            errors[f"{alpha:g}"] = math.inf
            continue
        coefficients = torch.cholesky_solve(right, factor)  # [s, r]
        cross = float((q * (coefficients.T @ held_kept[:, gone])).sum())  # Tr(Q Bᵀ G_SR)
        quadratic = float((q * (coefficients.T @ (held_kept[:, kept] @ coefficients))).sum())
        errors[f"{alpha:g}"] = constant - 2.0 * cross + quadratic
    return errors


def choose_ridge(weight: torch.Tensor, folds: list[Moments], removed: torch.Tensor, *, affine: bool,
                 alphas: tuple[float, ...] = RIDGE_GRID) -> RidgeChoice:
    """The α of least validation error summed over the folds (None: ∞ wins or ties).

    weight [out, n] the dense down projection; ``folds`` the windows' per-fold moments (at least
    two with tokens); ``affine``: the down projection has a bias (intercept fitted, mean-only at ∞).
    Deterministic: the folds are fixed by the window order, and ties go to the larger ridge.
    """
    used = [fold for fold in folds if fold.tokens > 0]
    if len(used) < 2:
        raise ValueError(f"validation needs at least 2 folds with tokens, got {len(used)}")
    totals = {"inf": 0.0, **{f"{alpha:g}": 0.0 for alpha in alphas}}
    for index, held_out in enumerate(used):
        train = pooled([fold for other, fold in enumerate(used) if other != index])
        train_gram, held_gram = _grams(train, held_out, affine)
        for key, value in held_out_errors(weight, train_gram, held_gram, removed, alphas).items():
            totals[key] += value
    best: float | None = None
    best_error = totals["inf"]
    for alpha in sorted(alphas, reverse=True):  # strictly better than a larger ridge to win
        if totals[f"{alpha:g}"] < best_error:
            best, best_error = alpha, totals[f"{alpha:g}"]
    return RidgeChoice(best, totals, len(used))
