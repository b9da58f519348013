"""The linear algebra of removing MLP neurons: Gram, least-squares fold-in, structured OBS, FLAP.

Notation (per decoder layer): ``h`` is the neuron vector (the input of the down projection, see
docs/architecture.md), ``W = W_down`` is ``[out, neurons]``, ``H = Σ_t h_t h_tᵀ`` the neuron Gram
over the calibration tokens, ``C`` and ``μ`` the covariance and mean of ``h``. Removing a set R of
neurons and keeping S changes the layer's output by ``W_R h_R``; the best linear replacement of
``h_R`` by the kept neurons is ``Bᵀ h_S`` with

    B = (H_SS + λI)⁻¹ H_SR                       [kept, removed]
    W[:, S] += W[:, R] Bᵀ                        (the fold-in)

and the output error left over the calibration tokens (λ = 0) is the Schur complement

    Σ_t ‖W_R h_R - W_R Bᵀ h_S‖² = Tr(W_R (H_RR - H_RS H_SS⁻¹ H_SR) W_Rᵀ) = Tr(W_R ((H⁻¹)_RR)⁻¹ W_Rᵀ),

the structured OBS error of ZipLM / SlimGPT. Removing neurons one at a time with the OBS update
of ``W`` and the rank-one downdate of ``H⁻¹`` gives the same ``W`` as one fold-in of the whole
set (successive Schur complements compose), which the tests check.

Mean: with an uncentred Gram the fold-in is a least-squares fit *without intercept*; it already
carries as much of ``μ_R`` as the kept neurons can express. Where the down projection has a bias
(OPT, GPT-2) ``affine_fold_in`` fits with an intercept (B from the covariance) and puts the rest
of the mean, ``W_R (μ_R - Bᵀ μ_S)``, into the bias. LLaMA-family ``down_proj`` has no bias, so
there only the uncentred fold-in is used (no parameter is added: the variant must load into the
unchanged architecture).
"""

from __future__ import annotations

import torch


def neuron_gram(covariance: torch.Tensor, mean: torch.Tensor, tokens: int) -> torch.Tensor:
    """H = Σ_t h hᵀ from the streamed covariance (divided by n) and mean.  [n, n] float64."""
    cov = covariance.to(torch.float64)
    mu = mean.to(torch.float64)
    return tokens * (cov + torch.outer(mu, mu))


def ridge(gram: torch.Tensor, damp: float) -> float:
    """λ = damp · mean(diag H), as SparseGPT dampens (1.0 when the diagonal is all zero)."""
    level = float(torch.diagonal(gram).mean())
    return damp * (level if level > 0 else 1.0)


def _split(neurons: int, removed: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    is_removed = torch.zeros(neurons, dtype=torch.bool, device=device)
    is_removed[removed] = True
    return torch.nonzero(~is_removed).squeeze(1), torch.nonzero(is_removed).squeeze(1)


def fold_in_coefficients(gram: torch.Tensor, removed: torch.Tensor, damp: float = 0.0) -> torch.Tensor:
    """B = (H_SS + λI)⁻¹ H_SR, S = the kept neurons in ascending order.  -> [kept, removed]."""
    kept, removed = _split(gram.shape[0], removed, gram.device)
    gram = gram.to(torch.float64)
    system = gram[kept][:, kept]
    system = system + ridge(gram, damp) * torch.eye(kept.numel(), dtype=gram.dtype, device=gram.device)
    right = gram[kept][:, removed]
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(right, factor)
    # An exactly singular H_SS (duplicated or dead kept neurons, λ = 0) still has a least-squares
    # answer; lstsq is ~10x slower than the Cholesky solve, so only the fallback.
    return torch.linalg.lstsq(system, right).solution


def fold_in(weight: torch.Tensor, gram: torch.Tensor, removed: torch.Tensor,
            damp: float = 0.0) -> torch.Tensor:
    """The down projection with neurons ``removed`` zeroed and folded into the kept ones.

    weight [out, n], gram [n, n] -> new weight [out, n] (weight's dtype), zero columns at removed.
    """
    kept, removed = _split(weight.shape[1], removed, weight.device)
    coefficients = fold_in_coefficients(gram, removed, damp)  # [kept, removed]
    wide = weight.to(torch.float64)
    result = wide.clone()
    result[:, kept] += wide[:, removed] @ coefficients.T
    result[:, removed] = 0.0
    return result.to(weight.dtype)


def affine_fold_in(weight: torch.Tensor, covariance: torch.Tensor, mean: torch.Tensor,
                   removed: torch.Tensor, damp: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold-in with an intercept, for a down projection with a bias.

    h_R ≈ Bᵀ h_S + c with B = (C_SS + λI)⁻¹ C_SR and c = μ_R - Bᵀ μ_S; returns
    (new weight [out, n], bias increment W_R c [out]).
    """
    kept, removed = _split(weight.shape[1], removed, weight.device)
    coefficients = fold_in_coefficients(covariance, removed, damp)  # [kept, removed]
    mu = mean.to(torch.float64)
    intercept = mu[removed] - coefficients.T @ mu[kept]  # [removed]
    wide = weight.to(torch.float64)
    result = wide.clone()
    result[:, kept] += wide[:, removed] @ coefficients.T
    result[:, removed] = 0.0
    return result.to(weight.dtype), (wide[:, removed] @ intercept).to(weight.dtype)


def mean_bias(weight: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """FLAP's bias compensation W_R μ_R: a removed neuron is replaced by its mean.  -> [out]."""
    return (weight[:, removed].to(torch.float64) @ mean[removed].to(torch.float64)).to(weight.dtype)


def structured_obs_error(weight: torch.Tensor, gram: torch.Tensor, removed: torch.Tensor,
                         damp: float = 0.0) -> float:
    """Tr(W_R ((H + λI)⁻¹)_RR⁻¹ W_Rᵀ): the output error left after removal + fold-in."""
    gram = gram.to(torch.float64)
    system = gram + ridge(gram, damp) * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    inverse_block = torch.linalg.inv(system)[removed][:, removed]
    w_removed = weight[:, removed].to(torch.float64)  # [out, removed]
    return float(torch.trace(w_removed @ torch.linalg.solve(inverse_block, w_removed.T)))


def flap_scores(variance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation metric Var(h_j) · ‖W[:, j]‖², low = remove first.  [n] -> [n]."""
    return variance.to(torch.float32) * weight.to(torch.float32).pow(2).sum(dim=0)


def joint_gaussian_mi(covariance: torch.Tensor, damp: float = 1e-6) -> torch.Tensor:
    """I(h_j; h_rest) = -½ log(1 - R²_j) nats under a Gaussian model.  [n, n] -> [n].

    1 - R²_j = 1 / (C_jj (C⁻¹)_jj): the fraction of neuron j's variance the others cannot
    predict linearly. ``damp`` is the relative ridge that keeps C invertible.
    """
    cov = covariance.to(torch.float64)
    variance = torch.diagonal(cov)
    inverse = torch.linalg.inv(cov + ridge(cov, damp) * torch.eye(cov.shape[0], dtype=cov.dtype,
                                                                  device=cov.device))
    unexplained = 1.0 / (variance * torch.diagonal(inverse)).clamp_min(1.0)
    return (-0.5 * torch.log(unexplained)).to(torch.float32)


def removals_per_update(block: int | None, neurons: int) -> int:
    """``block`` of greedy_neuron_removal, by default n/128: 1 is the exact greedy; a block of n/128
    neurons costs ~n/128 times fewer passes over the n x n inverse."""
    return block if block is not None else max(1, neurons // 128)


@torch.no_grad()
def greedy_neuron_removal(weight: torch.Tensor, gram: torch.Tensor, count: int, *, damp: float,
                          criterion: str = "obs", block: int = 1,
                          second_moment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove ``count`` neurons ``block`` at a time, updating ``(H + λI)⁻¹`` and the weights.

    criterion "obs" (ZipLM/SlimGPT): remove the neurons with the least error ‖W_j‖² / (H⁻¹)_jj,
    where W and H⁻¹ are those of the kept set after the removals so far. "information": remove the
    most predictable neurons, the largest joint Gaussian MI with the kept ones (``gram`` must then
    be the covariance: 1 - R²_j = 1 / (C_jj (C_S⁻¹)_jj)). "unexplained-output" (mi's
    ``weigh_output``, our addition): remove the least (1 - R²_j)·E[h_j²]·‖W_j‖², the part of the
    neuron's output the kept ones cannot reproduce (``gram`` the covariance, ``second_moment``
    [n] = E[h_j²]). After each round the removed set B is
    folded in, W -= W_B ((H⁻¹)_BB)⁻¹ (H⁻¹)_B,:, and H⁻¹ takes the rank-|B| downdate that makes it
    the inverse over the remaining neurons. ``block`` = 1 is the exact greedy; larger blocks
    re-score every ``block`` removals (one matrix product per round instead of ``block`` passes
    over the n x n inverse) and the final W is still exactly the fold-in of the removed set.

    weight [out, n], gram [n, n] -> (removal order LongTensor [count], folded weight [out, n]).
    """
    neurons = weight.shape[1]
    if not 0 <= count < neurons:
        raise ValueError(f"can remove 0 to {neurons - 1} of {neurons} neurons, not {count}")
    if criterion not in ("obs", "information", "unexplained-output"):
        raise ValueError(f"unknown criterion {criterion!r}")
    if criterion == "unexplained-output" and (second_moment is None or second_moment.shape != (neurons,)):
        raise ValueError("criterion 'unexplained-output' needs second_moment [n]")
    gram = gram.to(torch.float64)
    system = gram + ridge(gram, damp) * torch.eye(neurons, dtype=gram.dtype, device=gram.device)
    inverse = torch.linalg.inv(system)  # [n, n]
    work = weight.to(torch.float64).clone()  # [out, n]
    variance = torch.diagonal(system).clone()
    kept = torch.ones(neurons, dtype=torch.bool, device=weight.device)
    order: list[torch.Tensor] = []
    done = 0
    while done < count:
        pivot = torch.diagonal(inverse)
        if criterion == "obs":
            score = work.pow(2).sum(dim=0) / pivot
        elif criterion == "information":
            score = -(variance * pivot)  # 1 / (1 - R²) is largest for the most predictable
        else:
            assert second_moment is not None, "checked above"
            score = (second_moment.to(work) * work.pow(2).sum(dim=0)) / (variance * pivot)
        take = min(block, count - done)
        chosen = torch.topk(torch.where(kept, score, float("inf")), take, largest=False).indices
        chosen = chosen[torch.argsort(score[chosen], stable=True)]
        rows = torch.linalg.solve(inverse[chosen][:, chosen], inverse[chosen])  # [take, n]
        work -= work[:, chosen] @ rows
        inverse -= inverse[:, chosen] @ rows
        kept[chosen] = False
        inverse[chosen, :] = 0.0
        inverse[:, chosen] = 0.0
        inverse[chosen, chosen] = 1.0  # keeps the pivots positive; never chosen again
        work[:, chosen] = 0.0
        order.append(chosen)
        done += take
    removal = torch.cat(order) if order else torch.zeros(0, dtype=torch.long, device=weight.device)
    return removal.to(torch.long), work.to(weight.dtype)
