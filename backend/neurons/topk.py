"""Running top-k with exact, order-free merges: per row (neuron), the k best (score, key) pairs.

Order: higher score first, then smaller key (document << POSITION_BITS | position). With this
total order, top-k(A ∪ B) = top-k(top-k(A) ∪ top-k(B)), so batches and shards merge in any order
to the same result. Only positive scores are kept (for the negative side the score is -a): a
neuron that never fires has no examples, instead of k arbitrary zeros. Empty slots hold
score -inf and key KEY_EMPTY. Payloads (context windows) travel with their entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from backend.neurons.corpus import KEY_EMPTY


def ranked_order(scores: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Per row, the permutation that sorts ``[rows, m]`` entries by score desc, key asc."""
    by_key = keys.argsort(dim=1, stable=True)
    by_score = scores.gather(1, by_key).argsort(dim=1, descending=True, stable=True)
    return by_key.gather(1, by_score)


def first_ranked(scores: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """``ranked_order(scores, keys)[:, :k]`` for entries whose scores are positive or empty (-inf):
    one ``topk`` instead of two stable sorts. Only a tie between positive scores lets the key
    decide, so the rows holding one among (or at the edge of) their first k are ranked in full;
    entries with score <= 0 come out in score order, their keys unordered (they are empties).
    ``scores``/``keys`` [rows, m] -> [rows, min(k, m)]."""
    k = min(k, scores.shape[1])
    values, order = scores.topk(k, dim=1)  # [rows, k] descending, ties in no particular order
    boundary = values[:, -1:]
    tied = ((values[:, 1:] == values[:, :-1]) & (values[:, 1:] > 0)).any(1)
    tied |= ((scores == boundary) & (boundary > 0)).sum(1) > 1
    rows = tied.nonzero().flatten()
    if rows.numel():
        order[rows] = ranked_order(scores[rows], keys[rows])[:, :k]
    return order


@dataclass
class TopK:
    scores: torch.Tensor  # [rows, k] float32, -inf when empty
    keys: torch.Tensor  # [rows, k] int64, KEY_EMPTY when empty
    payload: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [rows, k, ...]

    @classmethod
    def empty(cls, rows: int, k: int, device, payload_shapes: dict[str, tuple[int, ...]] | None = None) -> TopK:
        return cls(
            torch.full((rows, k), float("-inf"), device=device),
            torch.full((rows, k), KEY_EMPTY, dtype=torch.int64, device=device),
            {name: torch.full((rows, k, *shape), float("nan"), device=device)
             for name, shape in (payload_shapes or {}).items()},
        )

    @property
    def k(self) -> int:
        return self.scores.shape[1]

    def take(self, order: torch.Tensor) -> TopK:
        """Entries reordered/selected per row by ``order`` [rows, m]."""
        payload = {}
        for name, values in self.payload.items():
            index = order.view(*order.shape, *([1] * (values.dim() - 2))).expand(*order.shape, *values.shape[2:])
            payload[name] = values.gather(1, index)
        return TopK(self.scores.gather(1, order), self.keys.gather(1, order), payload)

    def merge(self, other: TopK) -> TopK:
        """The top-k of both (k of self), exact under the (score, key) order."""
        names = set(self.payload) | set(other.payload)
        both = TopK(
            torch.cat([self.scores, other.scores], dim=1),
            torch.cat([self.keys, other.keys], dim=1),
            {name: torch.cat([_payload_or_nan(self, name, other), _payload_or_nan(other, name, self)], dim=1)
             for name in names},
        )
        return both.take(first_ranked(both.scores, both.keys, self.k))

    def merge_entries(self, rows: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Merge loose candidate entries into this top-k **in place**, exactly as ``merge`` would.

        ``rows``/``scores``/``keys`` [m]: entry i is a candidate of row ``rows[i]``. Only rows that
        receive a new entry are rewritten. The new entries' payloads are left NaN for the caller
        to fill (so windows are gathered only for entries that survived), at the returned
        (row, slot, entry) triples, each [s]: ``payload[row, slot]`` belongs to candidate ``entry``.
        """
        k = self.k
        kept = (scores > 0).nonzero().flatten()  # the top-k holds positive scores only
        rows, scores, keys = rows[kept], scores[kept], keys[kept]
        none = rows.new_zeros(0)
        if not rows.numel():
            return none, none, none
        # (index_select / index_copy_ / take below: plain advanced indexing is several times slower on CPU)
        grouped = rows.argsort(stable=True)  # candidates of a row together
        rows, scores, keys = rows[grouped], scores[grouped], keys[grouped]
        targets, counts = torch.unique_consecutive(rows, return_counts=True)  # [R]
        starts = counts.cumsum(0) - counts
        group = torch.repeat_interleave(torch.arange(targets.numel(), device=rows.device), counts)  # [m]
        width = int(counts.max())
        cell = group * width + torch.arange(rows.numel(), device=rows.device) - starts[group]  # [m]
        candidate_scores = scores.new_full((targets.numel() * width,), float("-inf"))
        candidate_keys = keys.new_full((targets.numel() * width,), KEY_EMPTY)
        candidate_scores.index_copy_(0, cell, scores)
        candidate_keys.index_copy_(0, cell, keys)
        both_scores = torch.cat([self.scores.index_select(0, targets), candidate_scores.view(-1, width)], 1)
        both_keys = torch.cat([self.keys.index_select(0, targets), candidate_keys.view(-1, width)], 1)
        order = first_ranked(both_scores, both_keys, k)  # [R, k]
        new_scores, new_keys = both_scores.gather(1, order), both_keys.gather(1, order)
        fresh = (order >= k) & (new_scores > 0)  # [R, k] slots now holding a candidate
        changed = fresh.any(1).nonzero().flatten()
        if not changed.numel():
            return none, none, none
        order, fresh = order.index_select(0, changed), fresh.index_select(0, changed)
        new_scores = new_scores.index_select(0, changed)
        changed_rows = targets.index_select(0, changed)
        self.scores.index_copy_(0, changed_rows, new_scores)
        self.keys.index_copy_(0, changed_rows, new_keys.index_select(0, changed))
        refill = fresh | ~(new_scores > 0)  # new entries (filled by the caller) and empty slots: NaN
        old = order.clamp(max=k - 1)
        for values in self.payload.values():
            extra = [1] * (values.dim() - 2)
            index = old.view(*old.shape, *extra).expand(*old.shape, *values.shape[2:])
            moved = values.index_select(0, changed_rows).gather(1, index)
            moved.masked_fill_(refill.view(*refill.shape, *extra), float("nan"))
            values.index_copy_(0, changed_rows, moved)
        row, slot = fresh.nonzero().unbind(1)
        entry = kept[grouped[starts[changed[row]] + order[row, slot] - k]]
        return changed_rows[row], slot, entry


def _payload_or_nan(top: TopK, name: str, reference: TopK) -> torch.Tensor:
    if name in top.payload:
        return top.payload[name]
    shape = reference.payload[name].shape
    return torch.full((shape[0], top.k, *shape[2:]), float("nan"), device=top.scores.device)


def batch_top(activations: torch.Tensor, keys: torch.Tensor, k: int, sign: int = 1
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact top-k of a batch per neuron by score ``sign * activations`` ([tokens, neurons]);
    ``keys`` [tokens].

    Returns (scores, keys, token rows), each [neurons, k]; entries with score <= 0 are empty.
    torch.topk breaks ties arbitrarily, so it fetches 2k candidates; a neuron whose last
    candidate still ties its k-th (more than k equal scores at the boundary: rare) is resolved
    exactly from its full column.
    """
    tokens, neurons = activations.shape
    fetched = min(2 * k, tokens)
    # largest=False instead of negating: no [tokens, neurons] copy for the negative side
    candidates, rows = activations.topk(fetched, dim=0, largest=sign > 0)  # [fetched, neurons]
    candidates = candidates * sign  # scores, descending
    candidates, rows = candidates.t(), rows.t()  # [neurons, fetched]
    last_fetched = candidates[:, -1]
    candidate_keys = keys[rows]
    order = first_ranked(candidates, candidate_keys, k)
    top_scores, top_keys, rows = candidates.gather(1, order), candidate_keys.gather(1, order), rows.gather(1, order)
    if fetched < tokens and fetched >= k:
        boundary = top_scores[:, k - 1]
        for neuron in ((boundary > 0) & (last_fetched == boundary)).nonzero().flatten().tolist():
            column = activations[:, neuron] * sign
            tied = (column >= boundary[neuron]).nonzero().flatten()  # [m] all entries at or above the boundary
            pick = tied[ranked_order(column[tied][None], keys[tied][None])[0, :k]]
            top_scores[neuron], top_keys[neuron], rows[neuron] = column[pick], keys[pick], pick
    if fetched < k:  # fewer tokens than k in this batch
        pad = k - fetched
        top_scores = torch.cat([top_scores, top_scores.new_full((neurons, pad), float("-inf"))], 1)
        top_keys = torch.cat([top_keys, top_keys.new_full((neurons, pad), KEY_EMPTY)], 1)
        rows = torch.cat([rows, rows.new_zeros((neurons, pad))], 1)
    empty = ~(top_scores > 0)
    return top_scores.masked_fill(empty, float("-inf")), top_keys.masked_fill(empty, KEY_EMPTY), rows


def batch_candidates(activations: torch.Tensor, keys: torch.Tensor, top: TopK, sign: int = 1
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch entries that can still enter ``top`` (per neuron, by score ``sign * a``):
    ``activations`` [tokens, neurons], ``keys`` [tokens].

    Returns (neuron, token row, score), each [m]. An entry scoring below the k-th score a full
    row already holds cannot enter it, so once the top-k fill up only the few entries at or above
    that bound are candidates (one comparison over the batch instead of a top-k per neuron). Rows
    with more than ``CANDIDATE_CAP`` candidates (all rows of a half's first batch) take the exact
    top-k of the batch (``batch_top``) instead. ``merge(top-k(batch))`` and merging these
    candidates give the same top-k, as every batch entry outside both cannot enter it.
    """
    neurons, k = activations.shape[1], top.k
    bound = top.scores[:, -1]  # [neurons] k-th score held, -inf while not full
    if bool((bound == float("-inf")).all()):
        return _flat_top(activations, keys, k, sign, None)
    # score >= bound and score > 0; a zero bound is nudged to the smallest positive float
    bound = bound.clamp(min=torch.finfo(activations.dtype).tiny)
    mask = activations >= bound if sign > 0 else activations <= -bound  # [tokens, neurons]
    cells = mask.view(-1).nonzero().flatten()  # [m] flat (token, neuron) cells
    token, neuron = cells // neurons, cells % neurons
    heavy = torch.bincount(neuron, minlength=neurons) > CANDIDATE_CAP * k  # [neurons]
    exact = None
    if bool(heavy.any()):
        light = (~heavy.index_select(0, neuron)).nonzero().flatten()
        cells, token, neuron = cells[light], token[light], neuron[light]
        exact = _flat_top(activations, keys, k, sign, heavy.nonzero().flatten())
    scores = activations.reshape(-1).take(cells)
    if sign < 0:
        scores = -scores
    if exact is None:
        return neuron, token, scores
    return torch.cat([neuron, exact[0]]), torch.cat([token, exact[1]]), torch.cat([scores, exact[2]])


CANDIDATE_CAP = 4  # candidates per neuron (times k) above which its batch top-k is computed instead


def loose_candidates(values: torch.Tensor, rows: torch.Tensor, keys: torch.Tensor, counts: torch.Tensor,
                     found: torch.Tensor, k: int, sign: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_candidates``' result from a pass that already counted and listed the entries at or
    above each neuron's bound (``backend.neurons.fused``): ``values`` [positions, N] with counted
    rows ``rows`` [counted] (keys ``keys`` [counted]); ``counts`` [N] entries found per neuron and
    ``found`` [N, capacity] the first of them (counted row numbers, row order), capacity >=
    CANDIDATE_CAP * k. Neurons with more than CANDIDATE_CAP * k take their exact batch top-k, as
    there. Returns (neuron, counted row, score), each [m]."""
    neurons = values.shape[1]
    heavy = counts > CANDIDATE_CAP * k  # [N]
    listed = torch.where(heavy, 0, counts)  # [N] entries listed for light neurons
    neuron, slot = (torch.arange(found.shape[1]) < listed[:, None]).nonzero().unbind(1)
    token = found[neuron, slot].long()
    scores = values.reshape(-1).take(rows.index_select(0, token) * neurons + neuron)
    if sign < 0:
        scores = -scores
    columns = heavy.nonzero().flatten()
    if not columns.numel():
        return neuron, token, scores
    # [counted, heavy]; every column is heavy in the first batch of each half (nothing held yet)
    selected = values if columns.numel() == neurons else values.index_select(1, columns)
    selected = selected.index_select(0, rows)
    local, exact_token, exact_scores = _flat_top(selected, keys, k, sign, None)
    return torch.cat([neuron, columns[local]]), torch.cat([token, exact_token]), torch.cat([scores, exact_scores])


def _flat_top(activations: torch.Tensor, keys: torch.Tensor, k: int, sign: int, columns: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batch_top`` of the ``columns`` (all when None) as loose (neuron, token row, score) [m]."""
    values = activations if columns is None else activations.index_select(1, columns)
    scores, _, rows = batch_top(values, keys, k, sign)  # [n, k]
    local, slot = (scores > 0).nonzero().unbind(1)
    neuron = local if columns is None else columns[local]
    return neuron, rows[local, slot], scores[local, slot]
