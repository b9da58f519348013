"""mi-prun: drop the decoder blocks whose output carries most information about their input.

MI-PRUN (Zhang et al., arXiv 2601.07212, "Optimize Large Language Model Pruning via Mutual
Information"). What the paper specifies (abstract; we did not have the full text): blocks are
judged redundant by the mutual information between hidden states before and after them ("transitions
in hidden states"); the data processing inequality relates the importance of a run of contiguous
blocks to that of single blocks; a search ("Fast-Block-Select") updates the set of removed blocks
iteratively towards a global optimum. What we chose, and why:

- *Estimator*: the Gaussian MI of the block's input and output vectors over the calibration tokens,
  ``I = −½ Σ_k log(1 − ρ_k²)`` with ρ_k the canonical correlations of the two, each first projected
  on its ``mi_rank`` leading principal components (the full 576-dimensional CCA would need far more
  tokens than a calibration set has). Exact for jointly Gaussian states; otherwise it measures the
  linear dependence. High MI = the output is nearly a linear function of the input: the block adds
  little, so it is the first to go.
- *Selection*: greedy and iterative (``iterative``, default on): drop the block of highest MI, run the
  windows through the model without it, re-score the remaining blocks, and repeat. Re-scoring on the
  pruned model is our reading of "updates block combinations iteratively"; by the data processing
  inequality a removed block's neighbours are then judged on the states they will really see. With
  ``iterative`` off, the ``drop_blocks`` blocks of highest MI from one dense pass go (like ShortGPT).
"""

from __future__ import annotations

import torch
from pydantic import Field

from backend.pruning.depth import BlockChoice, BlockContext, DepthOptions, depth_method, lowest_blocks

CORRELATION_CEILING = 1.0 - 1e-12  # keeps log(1 − ρ²) finite for a block that changes nothing


class MiPrunOptions(DepthOptions):
    mi_rank: int = Field(default=64, ge=1, le=4096,
                         description="mi-prun: principal components of each side in the Gaussian MI")
    iterative: bool = Field(default=True, description="mi-prun: re-score the remaining blocks after each drop")


def _leading_components(x: torch.Tensor, rank: int) -> torch.Tensor:
    """Centred ``x`` [tokens, d] projected on its ``rank`` leading principal directions: [tokens, rank]."""
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:rank].T


def gaussian_mi(x: torch.Tensor, y: torch.Tensor, rank: int) -> float:
    """Gaussian MI (nats) of x and y, [tokens, d] each, from the canonical correlations of their
    ``rank`` leading principal components (at most a quarter of the tokens, so the CCA is not fit to noise)."""
    tokens = x.shape[0]
    rank = max(1, min(rank, x.shape[1], y.shape[1], tokens // 4))
    qx = torch.linalg.qr(_leading_components(x.double(), rank)).Q  # [tokens, rank]
    qy = torch.linalg.qr(_leading_components(y.double(), rank)).Q
    rho = torch.linalg.svdvals(qx.T @ qy).clamp(0.0, CORRELATION_CEILING)  # canonical correlations
    return float(-0.5 * torch.log1p(-rho * rho).sum())


def _flat(states: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([state.reshape(-1, state.shape[-1]) for state in states])  # [tokens, hidden]


def _scores(context: BlockContext, rank: int, skip: frozenset[int]) -> list[float | None]:
    scores: list[float | None] = [None] * len(context.layers)
    for index, inputs, outputs in context.block_io(skip):
        scores[index] = gaussian_mi(_flat(inputs), _flat(outputs), rank)
    return scores


def choose_by_mutual_information(context: BlockContext, options: MiPrunOptions) -> BlockChoice:
    first = _scores(context, options.mi_rank, frozenset())
    if not options.iterative:
        negated = [-float(score) for score in first if score is not None]
        return BlockChoice(lowest_blocks(negated, options.drop_blocks), first, {"score": "gaussian mi, one pass"})
    dropped: list[int] = []
    rounds = []
    scores = first
    for _ in range(options.drop_blocks):
        candidates = [index for index, score in enumerate(scores) if score is not None]
        best = max(candidates, key=lambda index: (scores[index], -index))
        dropped.append(best)
        rounds.append({"dropped": best, "mi": scores[best]})
        if len(dropped) < options.drop_blocks:
            scores = _scores(context, options.mi_rank, frozenset(dropped))
    return BlockChoice(sorted(dropped), first, {"score": "gaussian mi, iterative", "rounds": rounds})


METHOD = depth_method("mi-prun", "drop the decoder blocks of highest Gaussian mutual information between "
                      "input and output, re-scored after each drop (arXiv 2601.07212; depth)",
                      choose_by_mutual_information, MiPrunOptions)
