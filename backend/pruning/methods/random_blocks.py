"""random-blocks: drop ``drop_blocks`` decoder blocks drawn at random (seeded): the depth baseline."""

from __future__ import annotations

import torch
from pydantic import Field

from backend.pruning.depth import BlockChoice, BlockContext, DepthOptions, depth_method


class RandomBlocksOptions(DepthOptions):
    block_seed: int = Field(default=0, ge=0, le=2**31 - 1, description="random-blocks: seed of the draw")


def choose_at_random(context: BlockContext, options: RandomBlocksOptions) -> BlockChoice:
    generator = torch.Generator().manual_seed(options.block_seed)
    drawn = torch.randperm(len(context.layers), generator=generator)[: options.drop_blocks]
    return BlockChoice(sorted(int(index) for index in drawn), [], {"score": "random draw"})


METHOD = depth_method("random-blocks", "drop decoder blocks drawn at random, seeded (baseline; depth)",
                      choose_at_random, RandomBlocksOptions, uses_data=False)
