"""Perplexity on held-out windows: the per-window NLLs it returns, computed here by hand."""

from __future__ import annotations

import math

import torch

from backend.data.windows import heldout_windows
from backend.evaluation.perplexity import perplexity
from tests.conftest import tiny_loaded


def test_window_nll_is_each_windows_summed_token_nll_and_gives_the_perplexity():
    loaded = tiny_loaded("llama")
    seqlen, max_windows = 32, 5
    # batch_size 2 over 5 windows: a last batch of one, so batching must not mix windows up.
    result = perplexity(loaded, "lambada", seqlen=seqlen, max_windows=max_windows, batch_size=2)
    windows = heldout_windows(loaded.tokenizer, "lambada", seqlen, max_windows=max_windows)
    assert result["windows"] == windows.shape[0] == len(result["window_nll"]) == max_windows
    with torch.no_grad():
        expected = []
        for window in windows:  # one window at a time, the NLL of each next token
            log_probs = torch.log_softmax(loaded.model(input_ids=window[None]).logits[0].double(), dim=-1)
            expected.append(-float(log_probs[torch.arange(seqlen - 1), window[1:]].sum()))
    assert all(type(value) is float for value in result["window_nll"])  # JSON-ready
    for got, want in zip(result["window_nll"], expected, strict=True):
        assert math.isclose(got, want, rel_tol=1e-4)
    assert result["tokens"] == max_windows * (seqlen - 1)
    assert math.isclose(result["perplexity"], math.exp(sum(expected) / result["tokens"]), rel_tol=1e-4)
