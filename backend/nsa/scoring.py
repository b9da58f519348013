"""NSA step 2: score every neuron by the share of its activation that falls on influential tokens.

For a text with influential token set S and A_tj = |a_tj| (or its positive part),
``Score_j = sum_{t in S} A_tj / sum_t A_tj`` over the text's real tokens (special tokens,
which have no characters, are left out of both sums).

Negligible-activation rule: a neuron whose total ``sum_t A_tj`` is below
``NEGLIGIBLE_FRACTION`` x the median total of its layer on that text is *negligible*: its
score is 0, so a near-silent neuron cannot reach a score of 1 by dividing one tiny number
by another. The median (not the mean) makes the bar robust to the few "massive activation"
neurons every LLM has.

Over several texts the score of a neuron is the mean of its per-text scores (0 where it was
negligible): every text counts equally, whatever its length.

Activations are reduced layer by layer inside the capture hooks (``LayerReducer``): for a
7B model only ``[neurons]`` scores and a few ``[tokens, k]`` columns per layer are kept,
never the ``[layers, tokens, neurons]`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_args

import torch

from backend.errors import UserError
from backend.models.hooks import StopForward, call_until_stopped
from backend.nsa.capture import NeuronCapture
from backend.nsa.options import ActivationMode

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

ACTIVATION_MODES = get_args(ActivationMode)
NEGLIGIBLE_FRACTION = 0.5


def activation_magnitude(neurons: torch.Tensor, mode: str = "abs") -> torch.Tensor:
    """A from signed activations (any shape): |a| ("abs") or max(a, 0) ("positive")."""
    if mode == "abs":
        return neurons.abs()
    if mode == "positive":
        return neurons.clamp_min(0)
    raise UserError(f"unknown activation mode {mode!r}: use {' or '.join(ACTIVATION_MODES)}")


def neuron_scores(
    magnitude: torch.Tensor,
    influential: torch.Tensor,
    scored: torch.Tensor | None = None,
    *,
    negligible_fraction: float = NEGLIGIBLE_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of one layer's neurons on one text, with the negligible-activation rule.

    magnitude: ``[tokens, neurons]`` A values; influential, scored: ``[tokens]`` bool masks
    (scored = tokens that count, default all). Returns ``(scores [neurons], eligible [neurons])``;
    negligible neurons score 0.
    """
    if scored is None:
        scored = torch.ones(magnitude.shape[0], dtype=torch.bool, device=magnitude.device)
    scored = scored.to(magnitude.device)
    influential = influential.to(magnitude.device) & scored
    total = magnitude[scored].sum(0)  # [neurons]
    on_influential = magnitude[influential].sum(0)  # [neurons]
    return scores_from_totals(on_influential, total, negligible_fraction)


def scores_from_totals(on_influential: torch.Tensor, total: torch.Tensor,
                       negligible_fraction: float = NEGLIGIBLE_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, eligible)`` ``[neurons]`` from each neuron's A on the influential tokens and in total."""
    bar = negligible_fraction * total.median()
    eligible = (total > 0) & (total >= bar)
    scores = torch.where(eligible, on_influential / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
    return scores, eligible


def aggregate_scores(per_text: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[neurons]`` mean over texts of per-text ``[neurons]`` scores."""
    return torch.stack(list(per_text)).mean(0)


def ranked_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values, ties broken by the lower index (deterministic)."""
    order = torch.sort(values, descending=True, stable=True).indices
    return order[:k]


@dataclass
class SelectedNeuron:
    layer: int
    index: int
    score: float  # aggregated over texts
    text_scores: list[float]  # per text, in text order


@dataclass
class Selection:
    """The top-k neurons overall (by score, descending) and the top neurons of each layer."""

    neurons: list[SelectedNeuron]
    per_layer: dict[int, list[tuple[int, float]]]  # layer -> [(index, score)] best first

    def indices_by_layer(self) -> dict[int, list[int]]:
        """layer -> neuron indices in selection order (the column order of observations)."""
        grouped: dict[int, list[int]] = {}
        for neuron in self.neurons:
            grouped.setdefault(neuron.layer, []).append(neuron.index)
        return grouped


def select_neurons(per_text_scores: Sequence[dict[int, torch.Tensor]], top_k: int,
                   per_layer_k: int | None = None) -> Selection:
    """Top-k neurons overall from per-text ``{layer: [neurons]}`` scores (aggregated by mean).

    Ties are broken by layer, then index, so the selection is reproducible.
    """
    if not per_text_scores:
        raise UserError("no texts to score")
    layers = sorted(per_text_scores[0])
    aggregated = {layer: aggregate_scores([s[layer] for s in per_text_scores]).cpu() for layer in layers}
    flat = torch.cat([aggregated[layer] for layer in layers])  # [layers * neurons]
    sizes = [aggregated[layer].numel() for layer in layers]
    starts = torch.tensor([0, *sizes]).cumsum(0)
    neurons = []
    for position in ranked_indices(flat, min(top_k, flat.numel())).tolist():
        slot = int(torch.searchsorted(starts, position, right=True)) - 1
        layer, index = layers[slot], position - int(starts[slot])
        neurons.append(SelectedNeuron(
            layer=layer, index=index, score=float(flat[position]),
            text_scores=[float(s[layer][index]) for s in per_text_scores],
        ))
    k_layer = per_layer_k or top_k
    per_layer = {
        layer: [(int(i), float(aggregated[layer][i])) for i in ranked_indices(aggregated[layer], k_layer)]
        for layer in layers
    }
    return Selection(neurons=neurons, per_layer=per_layer)


# ----------------------------------------------------------------------------- per-layer reductions


@dataclass
class LayerMass:
    """How much the whole layer fires, for the all-neurons baseline of step 3."""

    tokens: torch.Tensor  # [tokens] sum over all neurons of A
    words: torch.Tensor  # [words] sum over all neurons of (max over the word's tokens of A)


def layer_mass(magnitude: torch.Tensor, word_tokens: Sequence[Sequence[int]]) -> LayerMass:
    """magnitude: ``[tokens, neurons]``; word_tokens: the token indices of each word."""
    per_word = [magnitude[list(tokens)].amax(0).sum() if tokens else magnitude.new_zeros(())
                for tokens in word_tokens]
    words = torch.stack(per_word) if per_word else magnitude.new_zeros(0)
    return LayerMass(tokens=magnitude.sum(1).cpu(), words=words.cpu())


@dataclass
class LayerSums:
    """One layer on one text: ``on``, ``off`` are ``[neurons]``, ``words`` is ``[words, neurons]``."""

    on: torch.Tensor
    off: torch.Tensor
    words: torch.Tensor


def layer_sums(magnitude: torch.Tensor, influential: torch.Tensor, scored: torch.Tensor,
               word_tokens: Sequence[Sequence[int]]) -> LayerSums:
    """magnitude ``[tokens, neurons]`` A values; influential, scored ``[tokens]`` bool."""
    influential = influential.to(magnitude.device) & scored.to(magnitude.device)
    other = ~influential & scored.to(magnitude.device)
    if word_tokens:
        words = torch.stack([magnitude[list(tokens)].amax(0) if tokens else magnitude.new_zeros(magnitude.shape[1])
                             for tokens in word_tokens])
    else:
        words = magnitude.new_zeros((0, magnitude.shape[1]))
    return LayerSums(on=magnitude[influential].sum(0).cpu(), off=magnitude[other].sum(0).cpu(), words=words.cpu())


@dataclass
class LayerScores:
    """What the dense scoring pass keeps of one layer on one text."""

    scores: torch.Tensor  # [neurons]
    eligible: int  # how many neurons passed the negligible-activation rule
    candidates: torch.Tensor  # [k] the layer's best neuron indices on this text
    candidate_activations: torch.Tensor  # [tokens, k] their signed activations
    mass: LayerMass
    sums: LayerSums | None = None  # every neuron's masses, for the statistics (``backend.nsa.sums``)


def score_layer(
    neurons: torch.Tensor,
    influential: torch.Tensor,
    scored: torch.Tensor,
    word_tokens: Sequence[Sequence[int]],
    *,
    keep: int,
    mode: str = "abs",
    negligible_fraction: float = NEGLIGIBLE_FRACTION,
    with_sums: bool = False,
) -> LayerScores:
    """Reduce one layer's ``[tokens, neurons]`` signed activations to what NSA needs."""
    neurons = neurons.float()
    magnitude = activation_magnitude(neurons, mode)  # [tokens, neurons]
    scores, eligible = neuron_scores(magnitude, influential, scored, negligible_fraction=negligible_fraction)
    candidates = ranked_indices(scores, min(keep, scores.numel()))
    return LayerScores(
        scores=scores.cpu(),
        eligible=int(eligible.sum()),
        candidates=candidates.cpu(),
        candidate_activations=neurons[:, candidates].cpu(),
        mass=layer_mass(magnitude, word_tokens),
        sums=layer_sums(magnitude, influential, scored, word_tokens) if with_sums else None,
    )


def observe_layer(
    neurons: torch.Tensor, indices: Sequence[int], word_tokens: Sequence[Sequence[int]], mode: str = "abs"
) -> tuple[torch.Tensor, LayerMass]:
    """``([tokens, len(indices)] signed activations of the chosen neurons, the layer's mass)``."""
    neurons = neurons.float()
    columns = neurons[:, list(indices)].cpu()
    return columns, layer_mass(activation_magnitude(neurons, mode), word_tokens)


class LayerReducer(NeuronCapture):
    """A ``NeuronCapture`` that reduces each layer as it is produced instead of keeping it.

    ``reduce(layer, neurons)`` receives the layer's ``[tokens, neurons]`` activations (batch
    of one) inside the forward pass; its return value is stored in ``results[layer]`` and the
    activation tensor itself is released with the layer. Use ``run`` for the forward pass: it
    stops right after the deepest requested layer, since NSA never needs what comes after
    (later layers, the final norm, the LM head — about a fifth of a small model's cost).
    """

    def __init__(self, model, adapter, layers, reduce: Callable[[int, torch.Tensor], object]) -> None:
        super().__init__(model, adapter, layers)
        self._reduce = reduce
        self._model = model
        self.results: dict[int, object] = {}

    def hook_for(self, layer_index: int):
        deepest = self.layers[-1]

        def record(neurons: torch.Tensor) -> None:  # [1, tokens, neurons]
            self.results[layer_index] = self._reduce(layer_index, neurons.detach()[0])
            if layer_index == deepest:
                raise StopForward  # the rest of the forward pass (and the logits) is not needed

        return record

    def run(self, input_ids: torch.Tensor) -> dict[int, Any]:  # layer -> what reduce returned
        """One forward pass of ``input_ids`` (``[1, tokens]``) up to the deepest requested layer."""
        self.results = {}
        with self:
            call_until_stopped(self._model, input_ids=input_ids, use_cache=False)
        missing = sorted(set(self.layers) - set(self.results))
        if missing:
            raise RuntimeError(f"the forward pass never reached layer(s) {missing}")
        return self.results


@dataclass
class TextScores:
    """Dense scoring pass over one text: per-layer reductions."""

    layers: dict[int, LayerScores] = field(default_factory=dict)

    def scores(self) -> dict[int, torch.Tensor]:
        return {layer: reduced.scores for layer, reduced in self.layers.items()}


@torch.inference_mode()
def score_text(
    loaded: LoadedModel,
    input_ids: Sequence[int],
    influential: torch.Tensor,
    scored: torch.Tensor,
    word_tokens: Sequence[Sequence[int]],
    *,
    keep: int,
    mode: str = "abs",
    negligible_fraction: float = NEGLIGIBLE_FRACTION,
    with_sums: bool = False,
) -> TextScores:
    """One forward pass of the dense model, scoring every neuron of every layer on the fly."""
    device = loaded.device
    influential, scored = influential.to(device), scored.to(device)

    def reduce(_layer: int, neurons: torch.Tensor) -> LayerScores:
        return score_layer(neurons, influential, scored, word_tokens, keep=keep, mode=mode,
                           negligible_fraction=negligible_fraction, with_sums=with_sums)

    reducer = LayerReducer(loaded.model, loaded.adapter, None, reduce)
    results = reducer.run(torch.tensor([list(input_ids)], device=device))
    return TextScores(layers=dict(sorted(results.items())))


@torch.inference_mode()
def observe_text(
    loaded: LoadedModel,
    input_ids: Sequence[int],
    indices_by_layer: dict[int, list[int]],
    word_tokens: Sequence[Sequence[int]],
    mode: str = "abs",
) -> dict[int, tuple[torch.Tensor, LayerMass]]:
    """One forward pass keeping only the chosen neurons' columns and the masses of their layers."""

    def reduce(layer: int, neurons: torch.Tensor):
        return observe_layer(neurons, indices_by_layer[layer], word_tokens, mode)

    reducer = LayerReducer(loaded.model, loaded.adapter, list(indices_by_layer), reduce)
    return reducer.run(torch.tensor([list(input_ids)], device=loaded.device))
