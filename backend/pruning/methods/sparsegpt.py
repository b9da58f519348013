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

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from functools import partial

import torch
from pydantic import Field

from backend.errors import UserError
from backend.pruning.protection import WeightGuard, active, guarded_lowest_k
from backend.pruning.registry import InputNeeds, LayerToPrune, MethodOptions, Pruned, PruningMethod
from backend.pruning.spec import (
    SparsitySpec,
    lowest_in_matrix,
    lowest_k,
    pruned_count,
    require_divisible,
    require_weight_spec,
    zero_where,
)

MAX_DAMPENING_RETRIES = 8
BLOCKSIZE_RANGE = (1, 65536)
PERCDAMP_RANGE = (0.0, 1.0)  # fraction of the mean diagonal; 0 falls back to a tiny dampening


class HessianNotPositiveDefiniteError(UserError):
    """The Hessian stayed singular even after raising the dampening MAX_DAMPENING_RETRIES times."""


@dataclass(frozen=True)
class SparseGPTResult:
    weight: torch.Tensor  # [out, in], updated and pruned, in the input weight's dtype
    mask: torch.Tensor  # [out, in] bool, True = pruned (zero in ``weight``)
    damp: float  # the dampening added to diag(H) that made the Cholesky factorisation succeed
    retries: int  # how many times the dampening was multiplied by 10 before that


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    spec: SparsitySpec,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    guard: WeightGuard | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` to ``spec`` with SparseGPT.  weight: [out, in], hessian: [in, in]

    Unstructured: ``round(ratio * numel)`` weights pruned over the matrix exactly, split over the
    blocks by cumulative rounding (each block prunes ratio * its size, within one weight).
    N:M: m - n per group of m consecutive inputs of each row. Input channels that never fired
    (H_jj == 0) have their weights zeroed and are part of the mask, as in the reference.
    Multiplying ``hessian`` by a positive constant changes nothing (up to rounding).
    Neither input tensor is modified. ``guard``: protected weights (backend.pruning.protection),
    applied in each block's (or group's) selection; kept protected weights still take the OBS
    update, like every kept weight.
    """
    return sparsegpt_prune_together(
        [weight], hessian, spec, blocksize=blocksize, percdamp=percdamp, guards=[guard]
    )[0]


@torch.no_grad()
def sparsegpt_prune_together(
    weights: list[torch.Tensor],
    hessian: torch.Tensor,
    spec: SparsitySpec,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
    guards: list[WeightGuard | None] | None = None,
) -> list[SparseGPTResult]:
    """SparseGPT on several linears that read the same input (q/k/v, gate/up): one result each,
    equal to pruning each alone with ``sparsegpt_prune``.

    Every step of the algorithm is row-wise except the unstructured mask selection, which is
    made per linear here exactly as for a single one; so the linears' rows are stacked and share
    the Hessian's factorisation and the column loop, whose cost is mostly per column.
    """
    require_weight_spec(spec, "SparseGPT")
    if not weights:
        return []
    columns = weights[0].shape[1]
    for weight in weights:
        if weight.dim() != 2 or weight.shape[1] != columns:
            raise ValueError(
                f"weights pruned together must all be [out, {columns}], got {tuple(weight.shape)}"
            )
    if hessian.shape != (columns, columns):
        raise ValueError(
            f"hessian must be [{columns}, {columns}] for weight {tuple(weights[0].shape)}, "
            f"got {tuple(hessian.shape)}"
        )
    METHOD.check_request(METHOD.parse_options({"blocksize": blocksize, "percdamp": percdamp}), spec)
    if spec.kind == "nm":
        require_divisible(columns, spec.m)

    if not bool(torch.isfinite(hessian.sum())) and not bool(torch.isfinite(hessian).all()):
        raise UserError(
            "SparseGPT: the Hessian contains inf or NaN (the layer's inputs overflowed); "
            "calibrate in float32 or with shorter windows"
        )
    if bool((torch.diagonal(hessian) < 0).any()):
        raise UserError(
            "SparseGPT: the Hessian has negative diagonal entries, so it is not 2 X X^T / n"
        )

    device = weights[0].device
    # Work on W^T [in, out] with the linears side by side: the column loop then reads and
    # updates contiguous rows. torch.cat copies, so the inputs are never aliased.
    work_t = torch.cat(
        [weight.detach().to(device=device, dtype=torch.float32).t() for weight in weights], dim=1
    )
    row_counts = [weight.shape[0] for weight in weights]
    bounds = [
        0,
        *itertools.accumulate(row_counts),
    ]  # linear i owns work_t[:, bounds[i]:bounds[i + 1]]
    gram = hessian.detach().to(device=device, dtype=torch.float32)  # [in, in], never modified
    guard_t = _stacked_guard(guards, weights, device)  # [in, out] in Wᵀ's layout, or None
    dead = torch.diagonal(gram) == 0  # [in]: inputs that were zero on every calibration token
    if bool(dead.any()):
        # A dead input's row and column of H are zero; any positive diagonal entry makes H
        # invertible without touching the live inputs' factor. The live diagonal's mean (the
        # reference puts 1) keeps the result independent of H's scale, which implementations
        # normalise differently (2XX^T/n here, 2XX^T/windows in llm-compressor): with 1, the
        # dampening, a fraction of the mean diagonal, would depend on that scale.
        live = torch.diagonal(gram)[~dead]
        placeholder = float(live.mean()) if live.numel() else 1.0
        gram = gram.clone()
        gram[dead, dead] = placeholder
        if guard_t is None:
            work_t[dead] = 0.0
        else:  # a protected weight on a dead input keeps its value (no update reaches it)
            work_t[dead] = torch.where(guard_t.protected[dead], work_t[dead], 0.0)

    inverse_factor, damp, retries = _inverse_hessian_factor(
        gram, percdamp
    )  # upper Cholesky of H^-1

    mask_t = torch.zeros_like(work_t, dtype=torch.bool)  # [in, out]
    quota_upto = _quota_schedules(spec, row_counts, bounds, columns, guard_t)
    for start in range(0, columns, blocksize):
        end = min(start + blocksize, columns)
        block = work_t[start:end]  # [block, out], a view: updated in place
        factor = inverse_factor[start:end, start:end]  # [block, block]
        factor_diag = torch.diagonal(factor).unsqueeze(1)  # [block, 1]
        if spec.kind == "unstructured":
            saliency = block.pow(2) / factor_diag.pow(2)  # [block, out]
            quotas = [upto(end) - upto(start) for upto in quota_upto]  # each linear's share of the block
            block_guard = None if guard_t is None else guard_t.rows(start, end)
            if len(row_counts) == 1:
                block_mask = _lowest_in_block(saliency, quotas[0], block_guard)
            else:
                block_mask = torch.empty_like(block, dtype=torch.bool)
                for quota, low, high in zip(quotas, bounds, bounds[1:], strict=False):
                    block_mask[:, low:high] = _lowest_in_block(
                        saliency[:, low:high], quota, None if block_guard is None else block_guard.columns(low, high))
        else:
            block_mask = torch.zeros_like(block, dtype=torch.bool)  # chosen group by group below
        errors = _obs_block(block, factor, block_mask, spec,
                            None if guard_t is None else guard_t.rows(start, end))
        zero_where(block, block_mask)  # the pruned weights
        work_t[end:].addmm_(
            inverse_factor[start:end, end:].T, errors, alpha=-1.0
        )  # lazy batch update
        mask_t[start:end] = block_mask

    # Dead inputs' rows of W^T were zeroed above and no update reaches them: their rows and
    # columns of H^-1 (and so of U) are zero off the diagonal.
    mask_t |= dead.unsqueeze(1) if guard_t is None else dead.unsqueeze(1) & ~guard_t.protected
    return [
        SparseGPTResult(
            weight=work_t[:, low:high].t().contiguous().to(weight.dtype),
            mask=mask_t[:, low:high].t().contiguous(),
            damp=damp,
            retries=retries,
        )
        for weight, low, high in zip(weights, bounds, bounds[1:], strict=False)
    ]


def _stacked_guard(guards: list[WeightGuard | None] | None, weights: list[torch.Tensor],
                   device: torch.device) -> WeightGuard | None:
    """The linears' guards side by side in Wᵀ's layout [in, out_total]; None when none protects."""
    if guards is None or not any(active(guard) for guard in guards):
        return None
    if len(guards) != len(weights):
        raise ValueError(f"{len(guards)} guards for {len(weights)} weights")
    first = next(guard for guard in guards if guard is not None and active(guard))
    parts = [torch.zeros(weight.shape, dtype=torch.bool, device=device) if guard is None
             else guard.protected.to(device) for guard, weight in zip(guards, weights, strict=True)]
    return WeightGuard(torch.cat([part.t() for part in parts], dim=1), first.mode, first.factor)


def _quota_schedules(spec: SparsitySpec, row_counts: list[int], bounds: list[int], columns: int,
                     guard_t: WeightGuard | None) -> list[Callable[[int], int]]:
    """Per linear, ``upto(c)``: how many of its weights the blocks before column c prune.

    Cumulative rounding of ratio · rows · c (each block prunes its share, the total is exact).
    Under ``keep`` a linear's quota follows its *unprotected* weights instead, so a block with
    protected columns prunes less and the others more; the total is the same.
    """
    schedules: list[Callable[[int], int]] = []
    for rows, low, high in zip(row_counts, bounds, bounds[1:], strict=False):
        plain = partial(_plain_quota, rows, spec.ratio)
        protected = None if guard_t is None or guard_t.mode != "keep" else guard_t.protected[:, low:high]
        if spec.kind != "unstructured" or protected is None or not bool(protected.any()):
            schedules.append(plain)
            continue
        total = pruned_count(rows * columns, spec.ratio)
        open_upto = [0, *(~protected).sum(dim=1).cumsum(0).tolist()]  # [in + 1]
        # Protected weights must go too when too few are open: then the plain schedule.
        schedules.append(plain if open_upto[-1] < total else partial(_open_quota, open_upto, total))
    return schedules


def _plain_quota(rows: int, ratio: float, column: int) -> int:
    return pruned_count(rows * column, ratio)


def _open_quota(open_upto: list[int], total: int, column: int) -> int:
    """round(total · open(column) / open(all)), halves up, in integers."""
    available = open_upto[-1]
    return (2 * total * open_upto[column] + available) // (2 * available)


def _lowest_in_block(saliency: torch.Tensor, quota: int, guard: WeightGuard | None) -> torch.Tensor:
    """``quota`` lowest of one linear's part of a block, protected weights last (or up-weighted)."""
    if not active(guard):
        return lowest_in_matrix(saliency, quota)
    assert guard is not None
    flat = WeightGuard(guard.protected.reshape(1, -1), guard.mode, guard.factor)
    return guarded_lowest_k(saliency.reshape(1, -1), quota, flat).view_as(saliency)


SUB_BLOCK = 16  # columns solved one by one; the rest of the block waits for one matrix product


def _obs_block(
    block: torch.Tensor, factor: torch.Tensor, block_mask: torch.Tensor, spec: SparsitySpec,
    guard: WeightGuard | None = None,
) -> torch.Tensor:
    """The OBS column loop over one block, in place; returns the block's errors [block, out].

    Column c's error is (its pruned part) / U_cc, and every later column j loses U_cj times it.
    The block is cut into sub-blocks of SUB_BLOCK columns. Within one, each column first takes
    the updates of the sub-block's earlier columns in one matrix-vector product (left-looking:
    no per-column slicing, which cost more than the arithmetic), then gives its error; the rest
    of the block takes the sub-block's errors in one matrix product. The arithmetic is the
    reference's column-by-column update, reordered.
    Unstructured: ``block_mask`` [block, out] is given. N:M: each group of m columns gets its
    mask, from the weights as updated so far, when the loop reaches it (filled into block_mask).
    """
    size = block.shape[0]
    nm = spec.kind == "nm"
    factor_diag = torch.diagonal(factor).unsqueeze(1)  # [block, 1]
    errors = torch.zeros_like(block)  # [block, out]; rows not yet computed must read as zero
    # error = w * mask / U_cc; for N:M filled group by group as the masks are chosen
    error_scale = torch.zeros_like(block) if nm else block_mask / factor_diag
    block_rows, scale_rows, error_rows = block.unbind(0), error_scale.unbind(0), errors.unbind(0)
    # An N:M group is chosen from columns that have seen every earlier column's update, so it must
    # not straddle two sub-blocks.
    step = max(1, SUB_BLOCK // spec.m) * spec.m if nm else SUB_BLOCK
    factor_strict = factor.triu(1)  # [block, block]: U_kc for k < c, once for every sub-block
    for sub_start in range(0, size, step):
        sub_end = min(sub_start + step, size)
        strict_upper = factor_strict[sub_start:sub_end, sub_start:sub_end]  # U_kc for k < c
        coefficients = strict_upper.T.contiguous().unbind(0)  # [i]: U_kc of column sub_start + i
        sub_errors = errors[sub_start:sub_end]  # [sub, out], filled row by row below
        sub_errors_t = sub_errors.T  # [out, sub]
        for offset, column in enumerate(range(sub_start, sub_end)):
            if nm and column % spec.m == 0:
                group = slice(column, column + spec.m)
                current = torch.addmm(  # the group's weights with this sub-block's updates so far
                    block[group],
                    strict_upper[:, offset : offset + spec.m].T,
                    sub_errors,
                    alpha=-1.0,
                )  # [m, out]
                saliency = current.pow(2) / factor_diag[group].pow(2)
                if guard is None:
                    block_mask[group] = lowest_k(saliency.T, spec.m - spec.n).T
                else:
                    group_guard = WeightGuard(guard.protected[group].T, guard.mode, guard.factor)
                    block_mask[group] = guarded_lowest_k(saliency.T, spec.m - spec.n, group_guard).T
                error_scale[group] = block_mask[group] / factor_diag[group]
            if offset:
                block_rows[column].addmv_(sub_errors_t, coefficients[offset], alpha=-1.0)
            torch.mul(block_rows[column], scale_rows[column], out=error_rows[column])
        if sub_end < size:
            block[sub_end:].addmm_(factor[sub_start:sub_end, sub_end:].T, sub_errors, alpha=-1.0)
    return errors


def _inverse_hessian_factor(gram: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor U of (H + damp I)^-1 (so H^-1 = U^T U), raising damp x10 until it exists.

    gram: [in, in] -> (factor [in, in], damp used, retries). Never falls back silently: after
    MAX_DAMPENING_RETRIES failures it raises HessianNotPositiveDefiniteError.
    """
    columns = gram.shape[0]
    mean_diagonal = float(torch.diagonal(gram).mean())  # > 0: dead inputs were given a positive entry
    damp = percdamp * mean_diagonal
    fallback = 1e-6 * mean_diagonal  # percdamp = 0 would stay 0 when multiplied
    for retries in range(MAX_DAMPENING_RETRIES + 1):
        last_tried = damp
        damped = gram.clone()
        damped.diagonal().add_(damp)
        upper = _upper_inverse_factor(damped)
        if upper is not None and bool(torch.isfinite(upper.sum())):  # inf or NaN make the sum non-finite
            return upper, damp, retries
        damp = damp * 10.0 if damp > 0 else fallback
    raise HessianNotPositiveDefiniteError(
        f"SparseGPT: the {columns}x{columns} Hessian is not positive definite even with "
        f"dampening {last_tried:.3g} "
        f"after {MAX_DAMPENING_RETRIES} retries; use more calibration samples or a larger percdamp"
    )


INVERSE_FACTOR_LEAF = 256  # below this size one LAPACK factorisation; above it, halves (see below)
TRIANGULAR_LEAF = 128  # below this size a triangular factor is multiplied as a full matrix


def _upper_inverse_factor(hessian: torch.Tensor) -> torch.Tensor | None:
    """The upper-triangular U with U^T U = H^-1 (positive diagonal), or None if H is not positive definite.

    U = V^-1 for the "reversed" Cholesky factorisation H = V V^T with V upper triangular. By halves,
    H = [[A, B], [B^T, C]] and V = [[V11, V12], [0, V22]]:  V22 V22^T = C,  V12 = B V22^-T = B U22^T,
    V11 V11^T = A - V12 V12^T,  and  U = [[U11, -U11 V12 U22], [0, U22]].  Each half is solved the
    same way, and the products with the triangular U11, U22 skip their zero halves; below
    INVERSE_FACTOR_LEAF, with J the reversal permutation and J H J = L L^T (LAPACK), U = J L^-1 J.
    The reference factorises, inverts and factorises again; this is the work of one factorisation
    and one triangular inverse, in matrix products (1536 inputs: 25 ms on two threads and 39 ms on
    one, against 34 and 58 ms for LAPACK's factorisation plus a triangular inverse by halves,
    measured 2026-12-08).
    """
    size = hessian.shape[0]
    if size <= INVERSE_FACTOR_LEAF:
        lower, info = torch.linalg.cholesky_ex(hessian.flip(0, 1))
        if int(info) != 0:
            return None
        identity = torch.eye(size, dtype=hessian.dtype, device=hessian.device)
        return torch.linalg.solve_triangular(lower, identity, upper=False).flip(0, 1)
    half = size // 2
    lower_right = _upper_inverse_factor(hessian[half:, half:])  # U22: [size - half, size - half]
    if lower_right is None:
        return None
    coupling = _upper_product(lower_right, hessian[:half, half:].T).T  # V12 = B U22^T: [half, size - half]
    upper_left = _upper_inverse_factor(torch.addmm(hessian[:half, :half], coupling, coupling.T, alpha=-1.0))
    if upper_left is None:
        return None
    factor = torch.zeros_like(hessian)
    factor[:half, :half] = upper_left
    factor[half:, half:] = lower_right
    # -U11 (V12 U22), with V12 U22 = (U22^T V12^T)^T
    factor[:half, half:] = _upper_product(upper_left, _upper_product(lower_right.T, coupling.T, lower=True).T).neg_()
    return factor


def _upper_product(triangular: torch.Tensor, other: torch.Tensor, *, lower: bool = False) -> torch.Tensor:
    """triangular @ other for an upper (or, with ``lower``, lower) triangular [m, m] and other [m, k].

    By halves: the zero quarter of the triangle is never multiplied (half the flops of ``@``)."""
    size = triangular.shape[0]
    if size <= TRIANGULAR_LEAF:
        return triangular @ other
    half = size // 2
    product = torch.empty(size, other.shape[1], dtype=other.dtype, device=other.device)
    product[:half] = _upper_product(triangular[:half, :half], other[:half], lower=lower)
    product[half:] = _upper_product(triangular[half:, half:], other[half:], lower=lower)
    if lower:  # [[T11, 0], [T21, T22]]
        product[half:].addmm_(triangular[half:, :half], other[:half])
    else:  # [[T11, T12], [0, T22]]
        product[:half].addmm_(triangular[:half, half:], other[half:])
    return product


class SparseGPTOptions(MethodOptions):
    blocksize: int = Field(default=128, ge=BLOCKSIZE_RANGE[0], le=BLOCKSIZE_RANGE[1],
                           description="columns per block of the lazy batch update")
    percdamp: float = Field(default=0.01, ge=PERCDAMP_RANGE[0], le=PERCDAMP_RANGE[1],
                            description="dampening added to diag(H), as a fraction of its mean")


def _check_sparsegpt(options: SparseGPTOptions, spec: SparsitySpec) -> None:
    if spec.kind == "nm" and options.blocksize % spec.m:
        raise UserError(
            f"SparseGPT blocksize {options.blocksize} must be a multiple of m={spec.m} for {spec.label}"
        )


def _prune_sparsegpt(layer: LayerToPrune, options: SparseGPTOptions, spec: SparsitySpec) -> list[Pruned]:
    def prune_group(group: list[str]) -> list[Pruned]:
        # Pruned together: one factorisation of the shared Hessian and one column loop for all.
        results = sparsegpt_prune_together([layer.weight(name) for name in group],
                                           layer.statistics[group[0]].hessian, spec,
                                           blocksize=options.blocksize, percdamp=options.percdamp,
                                           guards=[layer.guard_of(name) for name in group])
        return [Pruned(name, result.mask, new_value=result.weight,
                       info={"damp": result.damp, "retries": result.retries})
                for name, result in zip(group, results, strict=True)]

    groups = layer.input_groups()
    if len(groups) < 2 or layer.weight(groups[0][0]).device.type != "cpu":
        return [change for group in groups for change in prune_group(group)]
    # On a CPU two groups run side by side, the costliest first, each on half the threads. Much of
    # a group's time is in steps that leave a core idle on two threads (kthvalue runs on one, the
    # column loop's products are small, the factorisation is only 1.4x faster on two): a SmolLM2
    # model's masks took 3.75-4.07 s one group after another and 2.94-3.31 s two at a time, one
    # thread each (2 cores, interleaved runs, 2026-12-08). The groups share nothing they write.
    # The thread count is torch's process-wide setting, so it is set while only the workers
    # compute and restored once every group has finished.
    by_cost = sorted(groups, key=lambda group: _group_cost(layer, group), reverse=True)
    threads = torch.get_num_threads()
    per_worker = max(1, threads // _GROUP_WORKERS)

    def on_its_threads(group: list[str]) -> list[Pruned]:
        torch.set_num_threads(per_worker)
        return prune_group(group)

    try:
        futures = {tuple(group): _GROUP_POOL.submit(on_its_threads, group) for group in by_cost}
        wait(futures.values())  # all done (a failed group too) before the thread count is restored
    finally:
        torch.set_num_threads(threads)
    return [change for group in groups for change in futures[tuple(group)].result()]


def _group_cost(layer: LayerToPrune, group: list[str]) -> int:
    """Rough work of pruning a group: the factorisation (in^3) and the column updates (in^2 out)."""
    columns = layer.weight(group[0]).shape[1]
    rows = sum(layer.weight(name).shape[0] for name in group)
    return columns**3 + columns**2 * rows


_GROUP_WORKERS = 2
_GROUP_POOL = ThreadPoolExecutor(max_workers=_GROUP_WORKERS, thread_name_prefix="prunelens-sparsegpt")


METHOD = PruningMethod(
    name="sparsegpt",
    description="OBS mask + weight update from H = 2XXᵀ/n (Frantar & Alistarh 2023)",
    prune=_prune_sparsegpt,
    options=SparseGPTOptions,
    needs=InputNeeds(hessian=True),
    check=_check_sparsegpt,
    protects=True,
)
