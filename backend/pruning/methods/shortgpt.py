"""shortgpt: drop the decoder blocks whose output is most like their input (Block Influence).

Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect" (2024).
Block Influence of block l over the calibration tokens t:

    BI_l = 1 − mean_t cos(x_in,t, x_out,t)

from one pass of the windows through the dense model; the ``drop_blocks`` blocks of lowest BI go.
"""

from __future__ import annotations

import torch

from backend.pruning.depth import BlockChoice, BlockContext, DepthOptions, depth_method, lowest_blocks


def block_influence(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """1 − mean cosine of input and output hidden states over all tokens; per batch [batch, tokens, hidden]."""
    total, count = 0.0, 0
    for x_in, x_out in zip(inputs, outputs, strict=True):
        cosine = torch.nn.functional.cosine_similarity(x_in.double(), x_out.double(), dim=-1)  # [batch, tokens]
        total += float(cosine.sum())
        count += cosine.numel()
    return 1.0 - total / count


def choose_by_influence(context: BlockContext, options: DepthOptions) -> BlockChoice:
    scores = [0.0] * len(context.layers)
    for index, inputs, outputs in context.block_io():
        scores[index] = block_influence(inputs, outputs)
    return BlockChoice(lowest_blocks(scores, options.drop_blocks), list(scores), {"score": "block influence"})


METHOD = depth_method("shortgpt", "drop the decoder blocks of lowest Block Influence 1 − cos(x_in, x_out) "
                      "(Men et al. 2024; depth)", choose_by_influence)
