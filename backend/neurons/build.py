"""The index pass: every batch runs through the dense model and each variant, hooks reduce the
neuron activations into mergeable state (``backend.neurons.accumulators``) as they are produced.

Per batch: the dense forward adds its statistics and keeps, per layer, its counted activations
(for Σ a_dense·a_variant) and its top-k candidates; each variant's forward then adds its own
statistics, the cross sums, and re-reads the dense candidates' windows under the variant; the
dense candidates, now carrying those re-read windows, merge into the dense top-k. The logits
give per-token KL(dense || variant). Nothing of size [corpus tokens, neurons] is ever kept.

``build_shard`` (a document range -> state), ``merge_states`` and ``write_index`` are the pieces
a sharded build combines; ``build_index`` is the single-process build.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from backend.errors import UserError
from backend.models.hooks import neuron_hooks
from backend.models.loader import LoadedModel
from backend.neurons.accumulators import SIDES, IndexState, KLState, LayerStats, merge_states, profile_matrix
from backend.neurons.corpus import (
    KEY_EMPTY,
    BatchTensors,
    IndexCorpus,
    batch_tensors,
    encode_corpus,
    plan_batches,
)
from backend.neurons.effects import weights_removed
from backend.neurons.request import KL_TOP, PROFILE_TOKENS, IndexRequest
from backend.neurons.topk import TopK, batch_top

Progress = Callable[[float, str], None]
DENSE = "dense"
_KL_CHUNK = 1024  # counted tokens per log-softmax chunk: bounds the [chunk, vocab] temporaries

__all__ = ["DENSE", "BuildStopped", "IndexInputs", "accumulate", "build_shard", "empty_state", "merge_states"]


class BuildStopped(UserError):
    """The caller asked the build to stop (``should_stop``); nothing was written."""


@dataclass
class IndexInputs:
    """What every part of a build shares: the request, the models' shape, the encoded corpus."""

    request: IndexRequest
    model_name: str
    corpus: IndexCorpus
    profile_ids: list[int]  # [P] the most frequent token ids, in slot order
    layers: int
    neurons: int
    vocab: int

    @classmethod
    def prepare(cls, request: IndexRequest, dense: LoadedModel) -> IndexInputs:
        corpus = encode_corpus(dense.tokenizer, request.corpus, request.tokens, request.max_length, request.seed)
        model = dense.model
        return cls(
            request=request, model_name=dense.name, corpus=corpus,
            profile_ids=corpus.profile_token_ids(PROFILE_TOKENS),
            layers=len(dense.adapter.decoder_layers(model)),
            neurons=dense.adapter.neuron_count(model),
            vocab=int(model.get_output_embeddings().weight.shape[0]),
        )


def empty_state(inputs: IndexInputs, variant_ids: Sequence[str], device) -> IndexState:
    request = inputs.request
    window = (2 * request.context + 1,)
    profile = len(inputs.profile_ids)

    def layers(payload: dict) -> list[LayerStats]:
        return [LayerStats.empty(inputs.neurons, profile, request.top_k, payload, device)
                for _ in range(inputs.layers)]

    dense_payload = {"window": window, **{f"reread:{vid}": window for vid in variant_ids}}
    return IndexState(
        documents=set(), tokens=0,
        profile_counts=torch.zeros((2, profile), dtype=torch.int64, device=device),
        layers={DENSE: layers(dense_payload), **{vid: layers({"window": window}) for vid in variant_ids}},
        cross={vid: [torch.zeros(inputs.neurons, dtype=torch.float64, device=device)
                     for _ in range(inputs.layers)] for vid in variant_ids},
        kl={vid: KLState.empty(inputs.vocab, KL_TOP, device) for vid in variant_ids},
    )


class _BatchObserver:
    """The hook functions of all models for one batch at a time (see the module docstring)."""

    def __init__(self, state: IndexState, inputs: IndexInputs, variant_ids: Sequence[str], device) -> None:
        self.state, self.inputs, self.variant_ids = state, inputs, list(variant_ids)
        self.k, self.context = inputs.request.top_k, inputs.request.context
        self.offsets = torch.arange(-self.context, self.context + 1, device=device)  # [W]
        slot = torch.full((inputs.vocab,), -1, dtype=torch.long)
        slot[torch.tensor(inputs.profile_ids, dtype=torch.long)] = torch.arange(len(inputs.profile_ids))
        self.slot_of_token = slot.to(device)  # [vocab] profile slot, -1 for other tokens
        self.batch: BatchTensors | None = None
        self.profile_sums: torch.Tensor | None = None  # [P, counted] of the current batch
        self.dense_counted: dict[int, torch.Tensor] = {}  # layer -> [counted, N]
        self.pending: dict[int, dict[str, tuple[TopK, torch.Tensor, torch.Tensor]]] = {}

    def start(self, batch: BatchTensors) -> None:
        self.batch = batch
        slots = self.slot_of_token[batch.token_ids]
        profile_rows = (slots >= 0).nonzero().flatten()
        profile_slots = slots[profile_rows]
        self.state.profile_counts[batch.half].index_add_(0, profile_slots, torch.ones_like(profile_slots))
        self.profile_sums = profile_matrix(profile_rows, profile_slots, len(self.inputs.profile_ids),
                                           batch.token_ids.numel())  # [P, counted]

    def function(self, model_id: str, layer: int):
        def observe(neurons: torch.Tensor) -> None:  # [batch, tokens, neurons]
            self._observe(model_id, layer, neurons.detach().reshape(-1, neurons.shape[-1]))

        return observe

    def _windows(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For top rows [N, k]: flat padded positions of their windows [N, k, W] and which of
        them lie inside the document and after the start token."""
        batch = self.batch
        assert batch is not None
        position = batch.position[rows][..., None] + self.offsets  # [N, k, W]
        inside = (position >= 1) & (position < batch.doc_length[rows][..., None])
        flat = (batch.flat[rows][..., None] + self.offsets).clamp_(0, batch.input_ids.numel() - 1)
        return flat, inside

    @staticmethod
    def _gather(flat_neurons: torch.Tensor, flat: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """Activations [N, k, W] of each neuron at its own window positions (NaN outside)."""
        neuron = torch.arange(flat_neurons.shape[1], device=flat.device)[:, None, None]
        return flat_neurons[flat, neuron].masked_fill_(~inside, float("nan"))

    def _observe(self, model_id: str, layer: int, flat_neurons: torch.Tensor) -> None:
        batch = self.batch
        assert batch is not None
        counted = flat_neurons.index_select(0, batch.flat)  # [counted, N]
        stats = self.state.layers[model_id][layer]
        stats.add_tokens(counted, batch.half, self.profile_sums)
        candidates = {}
        for side, sign in zip(SIDES, (1, -1), strict=True):
            scores, keys, rows = batch_top(counted, batch.keys, self.k, sign)
            flat, inside = self._windows(rows)
            inside &= (keys != KEY_EMPTY)[..., None]  # empty entries carry NaN windows, as TopK.empty
            candidates[side] = (TopK(scores, keys, {"window": self._gather(flat_neurons, flat, inside)}), flat, inside)
        if model_id == DENSE:
            if self.variant_ids:
                self.dense_counted[layer] = counted
                self.pending[layer] = candidates
            else:
                self._merge(stats, {side: top for side, (top, _, _) in candidates.items()})
            return
        dense = self.dense_counted[layer]
        self.state.cross[model_id][layer] += torch.linalg.vecdot(dense, counted, dim=0).double()
        for top, flat, inside in self.pending[layer].values():
            top.payload[f"reread:{model_id}"] = self._gather(flat_neurons, flat, inside)
        self._merge(stats, {side: top for side, (top, _, _) in candidates.items()})

    def _merge(self, stats: LayerStats, candidates: dict[str, TopK]) -> None:
        half = self.batch.half if self.batch else 0
        for side, top in candidates.items():
            stats.top[(half, side)] = stats.top[(half, side)].merge(top)

    def finish(self) -> None:
        """After every model ran the batch: the dense candidates (with re-read windows) merge."""
        for layer, candidates in self.pending.items():
            self._merge(self.state.layers[DENSE][layer], {side: top for side, (top, _, _) in candidates.items()})
        self.pending.clear()
        self.dense_counted.clear()


def _log_probs(logits: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """log-softmax of the counted positions' logits: [counted, vocab] float32."""
    logits = logits.reshape(-1, logits.shape[-1])
    out = torch.empty((flat.numel(), logits.shape[-1]), dtype=torch.float32, device=logits.device)
    for start in range(0, flat.numel(), _KL_CHUNK):
        rows = flat[start:start + _KL_CHUNK]
        out[start:start + rows.numel()] = F.log_softmax(logits[rows].float(), dim=-1)
    return out


def _token_kl(dense_log_probs: torch.Tensor, logits: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """KL(p_dense || p_variant) per counted position: [counted]."""
    logits = logits.reshape(-1, logits.shape[-1])
    kl = torch.empty(flat.numel(), dtype=torch.float32, device=logits.device)
    for start in range(0, flat.numel(), _KL_CHUNK):
        rows = flat[start:start + _KL_CHUNK]
        variant = F.log_softmax(logits[rows].float(), dim=-1)
        dense = dense_log_probs[start:start + rows.numel()]
        kl[start:start + rows.numel()] = F.kl_div(variant, dense, log_target=True, reduction="none").sum(-1)
    return kl


@torch.inference_mode()
def accumulate(dense: LoadedModel, variants: dict[str, LoadedModel], inputs: IndexInputs,
               documents: Sequence[int], *, progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None) -> IndexState:
    """The state of ``documents`` (corpus numbers): one pass, every model on every batch."""
    report = progress or (lambda _fraction, _message: None)
    device = dense.device
    state = empty_state(inputs, list(variants), device)
    state.weights_removed = {vid: weights_removed(dense, loaded) for vid, loaded in variants.items()}
    observer = _BatchObserver(state, inputs, list(variants), device)
    corpus = inputs.corpus.documents
    batches = plan_batches(corpus, documents, inputs.request.batch_tokens)
    total = sum(len(corpus[n]) - 1 for n in documents) or 1
    pad_id = dense.tokenizer.pad_token_id if dense.tokenizer.pad_token_id is not None else 0
    models = {DENSE: dense, **variants}
    started = time.perf_counter()
    with ExitStack() as hooks:
        for model_id, loaded in models.items():
            hooks.enter_context(neuron_hooks(loaded.model, loaded.adapter, {
                layer: observer.function(model_id, layer) for layer in range(inputs.layers)}))
        done = 0
        for number, batch in enumerate(batches):
            if should_stop is not None and should_stop():
                raise BuildStopped("the index build was stopped; nothing was written")
            report(done / total, f"batch {number + 1}/{len(batches)}")
            tensors = batch_tensors(batch, corpus, pad_id, device)
            observer.start(tensors)
            dense_log_probs = None
            for model_id, loaded in models.items():
                logits = loaded.model(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask,
                                      use_cache=False).logits  # [rows, length, vocab]
                if not variants:
                    break
                if model_id == DENSE:
                    dense_log_probs = _log_probs(logits, tensors.flat)
                else:
                    assert dense_log_probs is not None
                    kl = _token_kl(dense_log_probs, logits, tensors.flat)
                    scores, keys, _ = batch_top(kl[:, None], tensors.keys, KL_TOP)
                    state.kl[model_id].add_tokens(kl, tensors.token_ids, TopK(scores, keys))
                del logits
            observer.finish()
            del dense_log_probs
            state.documents.update(batch.documents)
            counted = int(tensors.flat.numel())
            state.tokens += counted
            done += counted
    state.timings["pass_seconds"] = time.perf_counter() - started
    report(1.0, f"{state.tokens} tokens indexed")
    return state


def build_shard(request: IndexRequest, documents_range: range, *, progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None) -> IndexState:
    """The state of the documents in ``documents_range`` (a shard), models loaded here."""
    from backend.neurons.models import load_index_models

    dense, variants = load_index_models(request)
    inputs = IndexInputs.prepare(request, dense)
    numbers = [n for n in documents_range if 0 <= n < len(inputs.corpus.documents)]
    return accumulate(dense, variants, inputs, numbers, progress=progress, should_stop=should_stop)

