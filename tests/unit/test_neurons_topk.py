"""The index pass's candidate merge (only the batch entries that can still enter a top-k, merged
in place) against the plain merge of the batch's full top-k, on data with many exact ties."""

from __future__ import annotations

import torch

from backend.neurons.corpus import KEY_EMPTY
from backend.neurons.topk import CANDIDATE_CAP, TopK, batch_candidates, batch_top

K, WINDOW = 5, 3


def _window_of(activations: torch.Tensor, rows: torch.Tensor, neuron: torch.Tensor) -> torch.Tensor:
    """A payload derived from (token row, neuron): [.., WINDOW], so moved payloads can be checked."""
    return (rows[..., None] * 1000 + neuron[..., None] * 10 + torch.arange(WINDOW)).float()


def _full_merge(top: TopK, activations: torch.Tensor, keys: torch.Tensor, sign: int) -> TopK:
    scores, top_keys, rows = batch_top(activations, keys, K, sign)  # [N, K]
    neuron = torch.arange(activations.shape[1])[:, None].expand_as(rows)
    window = _window_of(activations, rows, neuron).masked_fill_(~(scores > 0)[..., None], float("nan"))
    return top.merge(TopK(scores, top_keys, {"window": window}))


def _candidate_merge(top: TopK, activations: torch.Tensor, keys: torch.Tensor, sign: int) -> TopK:
    top = TopK(top.scores.clone(), top.keys.clone(), {"window": top.payload["window"].clone()})
    neuron, rows, scores = batch_candidates(activations, keys, top, sign)
    neuron, slot, entry = top.merge_entries(neuron, scores, keys[rows])
    top.payload["window"][neuron, slot] = _window_of(activations, rows[entry], neuron)
    return top


def test_candidate_merge_equals_the_merge_of_the_batch_top_k_with_ties():
    generator = torch.Generator().manual_seed(0)
    tokens, neurons = 300, 64
    # batches of few distinct values (exact ties everywhere, zeros, both signs); keys unique
    batches = [torch.randint(-6, 7, (tokens, neurons), generator=generator).float() / 2 for _ in range(4)]
    batches[2][:, :8] = torch.rand((tokens, 8), generator=generator) * 9  # 8 neurons with many candidates
    batches[3][:, 8:16] = 0.0  # 8 neurons silent in a batch
    all_keys = torch.randperm(len(batches) * tokens, generator=generator)  # interleaved across batches
    for sign in (1, -1):
        full = plain = TopK.empty(neurons, K, "cpu", {"window": (WINDOW,)})
        for number, activations in enumerate(batches):
            keys = all_keys[number * tokens:(number + 1) * tokens]
            if number == 2:  # more candidates than the cap: the exact batch top-k is used for them
                bound = plain.scores[:, -1].clamp(min=0)
                assert ((sign * activations >= bound).sum(0) > CANDIDATE_CAP * K).any()
            full = _full_merge(full, activations, keys, sign)
            plain = _candidate_merge(plain, activations, keys, sign)
            assert torch.equal(plain.keys, full.keys)
            assert torch.equal(plain.scores, full.scores)
            torch.testing.assert_close(plain.payload["window"], full.payload["window"], equal_nan=True, rtol=0, atol=0)
        assert (full.keys != KEY_EMPTY).all()  # the rows did fill up, so the bound was in use
