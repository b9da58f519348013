"""SparseGPT: prune a layer and update its remaining weights to reconstruct the layer's output.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). For a layer W: [out, in] and the Hessian of its squared output error
H = 2 X X^T / n (X = [in, tokens]), columns are processed left to right in blocks. Within a
block the mask is chosen by the OBS saliency w^2 / [H^-1]_jj^2 (adaptive mask selection); each
pruned column's error is spread over the not-yet-processed columns of the block with the row of
the upper Cholesky factor of H^-1 (the optimal brain surgeon update, done column by column), and
the block's accumulated error is applied to all later blocks in one matrix product (lazy batch
update). N:M masks are chosen every m columns, from the weights as updated so far.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.errors import UserError
from backend.pruning.spec import (
    SparsitySpec,
    lowest_in_matrix,
    lowest_k,
    pruned_count,
    require_divisible,
    require_weight_spec,
)

MAX_DAMPENING_RETRIES = 8


class HessianNotPositiveDefiniteError(UserError):
    """The Hessian stayed singular even after raising the dampening MAX_DAMPENING_RETRIES times."""


@dataclass(frozen=True)
class SparseGPTResult:
    weight: torch.Tensor  # [out, in], updated and pruned, in the input weight's dtype
    mask: torch.Tensor  # [out, in] bool, True = pruned (zero in ``weight``)
    damp: float  # the dampening added to diag(H) that made the Cholesky factorisations succeed
    retries: int  # how many times the dampening was multiplied by 10 before that


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: SparsitySpec,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> SparseGPTResult:
    """Prune ``weight`` to ``spec`` with SparseGPT.  weight: [out, in], hessian: [in, in]

    Unstructured: ``round(ratio * numel)`` weights pruned over the matrix exactly, split over the
    blocks by cumulative rounding (each block prunes ratio * its size, within one weight).
    N:M: m - n per group of m consecutive inputs of each row. Input channels that never fired
    (H_jj == 0) have their weights zeroed and are part of the mask, as in the reference.
    Neither input tensor is modified.
    """
    require_weight_spec(spec, "SparseGPT")
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(
            f"hessian must be [{columns}, {columns}] for weight {tuple(weight.shape)}, "
            f"got {tuple(hessian.shape)}"
        )
    if not percdamp >= 0:
        raise UserError(f"SparseGPT percdamp must be a non-negative fraction, got {percdamp}")
    if blocksize < 1:
        raise UserError(f"SparseGPT blocksize must be positive, got {blocksize}")
    if spec.kind == "nm":
        require_divisible(columns, spec.m)
        if blocksize % spec.m:
            raise UserError(
                f"SparseGPT blocksize {blocksize} must be a multiple of m={spec.m} for {spec.label}"
            )

    if not bool(torch.isfinite(hessian).all()):
        raise UserError(
            "SparseGPT: the Hessian contains inf or NaN (the layer's inputs overflowed); "
            "calibrate in float32 or with shorter windows"
        )
    if bool((torch.diagonal(hessian) < 0).any()):
        raise UserError(
            "SparseGPT: the Hessian has negative diagonal entries, so it is not 2 X X^T / n"
        )

    device = weight.device
    # Work on W^T [in, out]: the column loop then reads and updates contiguous rows.
    work_t = (
        weight.detach().to(dtype=torch.float32, copy=True).t().contiguous()
    )  # [in, out], never aliases
    gram = hessian.detach().to(device=device, dtype=torch.float32).clone()  # [in, in]
    dead = torch.diagonal(gram) == 0  # [in]: inputs that were zero on every calibration token
    gram[dead, dead] = 1.0
    work_t[dead] = 0.0

    inverse_factor, damp, retries = _inverse_hessian_factor(
        gram, percdamp
    )  # upper Cholesky of H^-1

    mask_t = torch.zeros(columns, rows, dtype=torch.bool, device=device)  # [in, out]
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block = work_t[start:end].clone()  # [block, out]
        errors = torch.empty_like(block)  # [block, out]: (pruned part of w) / [U]_jj, per column
        factor = inverse_factor[start:end, start:end]  # [block, block]
        factor_diag = torch.diagonal(factor).unsqueeze(1)  # [block, 1]
        if spec.kind == "unstructured":
            quota = pruned_count(rows * end, spec.ratio) - pruned_count(rows * start, spec.ratio)
            block_mask = lowest_in_matrix(block.pow(2) / factor_diag.pow(2), quota)  # [block, out]
            error_scale = block_mask / factor_diag  # error = w * mask / U_jj
        else:
            block_mask = torch.zeros_like(block, dtype=torch.bool)
            error_scale = torch.zeros_like(block)
        for column in range(end - start):
            if spec.kind == "nm" and column % spec.m == 0:
                group = slice(column, column + spec.m)
                saliency = block[group].pow(2) / factor_diag[group].pow(
                    2
                )  # [m, out], weights updated so far
                block_mask[group] = lowest_k(saliency.T, spec.m - spec.n).T
                error_scale[group] = block_mask[group] / factor_diag[group]
            torch.mul(block[column], error_scale[column], out=errors[column])
            # OBS update of the block's later columns (the pruned ones become zero below)
            block[column + 1 :].addr_(factor[column, column + 1 :], errors[column], alpha=-1.0)
        work_t[start:end] = block.masked_fill(block_mask, 0.0)
        work_t[end:].addmm_(
            inverse_factor[start:end, end:].T, errors, alpha=-1.0
        )  # lazy batch update
        mask_t[start:end] = block_mask

    mask_t |= dead.unsqueeze(1)
    work_t[mask_t] = 0.0
    pruned_weight = work_t.t().contiguous().to(weight.dtype)
    return SparseGPTResult(
        weight=pruned_weight, mask=mask_t.t().contiguous(), damp=damp, retries=retries
    )


def _inverse_hessian_factor(gram: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + damp I)^-1, raising damp x10 until it exists.

    gram: [in, in] -> (factor [in, in], damp used, retries). Never falls back silently: after
    MAX_DAMPENING_RETRIES failures it raises HessianNotPositiveDefiniteError.
    """
    columns = gram.shape[0]
    mean_diagonal = float(torch.diagonal(gram).mean())  # > 0: dead inputs were set to 1
    damp = percdamp * mean_diagonal
    fallback = 1e-6 * mean_diagonal  # percdamp = 0 would stay 0 when multiplied
    identity = torch.eye(columns, dtype=gram.dtype, device=gram.device)
    for retries in range(MAX_DAMPENING_RETRIES + 1):
        last_tried = damp
        factor, info = torch.linalg.cholesky_ex(gram + damp * identity)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()):
                return upper, damp, retries
        damp = damp * 10.0 if damp > 0 else fallback
    raise HessianNotPositiveDefiniteError(
        f"SparseGPT: the {columns}x{columns} Hessian is not positive definite even with "
        f"dampening {last_tried:.3g} "
        f"after {MAX_DAMPENING_RETRIES} retries; use more calibration samples or a larger percdamp"
    )
