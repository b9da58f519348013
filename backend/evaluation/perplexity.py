"""Perplexity on non-overlapping windows of a held-out text (WikiText-2 test online, LAMBADA offline)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel


@torch.inference_mode()
def perplexity(loaded: LoadedModel, text_set: str, *, seqlen: int = 512, max_windows: int | None = 64,
               batch_size: int = 4, progress: Callable[[float, str], None] | None = None) -> dict:
    """exp(mean token NLL) over non-overlapping ``seqlen`` windows; every window predicts
    ``seqlen - 1`` tokens (no context carried across windows, as in the Wanda/SparseGPT papers).

    ``window_nll``: each window's summed token NLL, in window order, so that two models measured
    on the same windows can be compared pair by pair (a paired bootstrap over windows)."""
    from backend.data.windows import heldout_windows

    seqlen = min(seqlen, loaded.max_length)
    windows = heldout_windows(loaded.tokenizer, text_set, seqlen, max_windows=max_windows)  # [n, seqlen]
    window_nll: list[float] = []
    total_tokens = 0
    chunks = windows.split(batch_size)
    for done, chunk in enumerate(chunks):
        input_ids = chunk.to(loaded.device)
        logits = loaded.model(input_ids=input_ids, use_cache=False).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none"
        )  # [batch, seqlen - 1]
        window_nll += nll.double().sum(dim=1).tolist()
        total_tokens += input_ids[:, 1:].numel()
        if progress:
            progress((done + 1) / len(chunks), f"window batch {done + 1}/{len(chunks)}")
    return {
        "text_set": text_set,
        "seqlen": seqlen,
        "windows": int(windows.shape[0]),
        "tokens": total_tokens,
        "perplexity": math.exp(math.fsum(window_nll) / total_tokens),
        "window_nll": window_nll,
    }
