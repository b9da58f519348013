"""The index pass: every batch runs through the dense model and each variant, hooks reduce the
neuron activations into mergeable state (``backend.neurons.accumulators``) as they are produced.

Per batch: the dense forward adds its statistics, merges its candidates into the dense top-k
(``backend.neurons.topk.batch_candidates``: once a neuron's top-k is full, only the batch entries
at or above its k-th score) and keeps, per layer, its counted activations (for Σ a_dense·a_variant)
and the entries that entered; windows are gathered for those entries only. Each variant's forward
then adds its own statistics, the cross sums, and re-reads the newly entered dense entries'
windows under the variant. The final hidden states give per-token KL(dense || variant), the LM
head run in chunks (``_token_kl``). Nothing of size [corpus tokens, neurons] is ever kept.

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
from backend.models.hooks import StopForward, call_until_stopped, neuron_hooks, pre_hooks
from backend.models.loader import LoadedModel
from backend.neurons import fused
from backend.neurons.accumulators import SIDES, IndexState, KLState, LayerStats, merge_states, profile_matrix
from backend.neurons.corpus import (
    BatchTensors,
    IndexCorpus,
    batch_tensors,
    encode_corpus,
    plan_batches,
)
from backend.neurons.effects import weights_removed
from backend.neurons.request import KL_TOP, PROFILE_TOKENS, IndexRequest
from backend.neurons.topk import CANDIDATE_CAP, TopK, batch_candidates, batch_top, loose_candidates

Progress = Callable[[float, str], None]
DENSE = "dense"
_KL_CHUNK = 512  # counted tokens per LM-head chunk: bounds the [chunk, vocab] temporaries

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
        # layer -> the dense model's activations of this batch [positions, N] (the hook's tensor, kept alive)
        self.dense_kept: dict[int, torch.Tensor] = {}
        self.counted_slots: torch.Tensor | None = None  # [counted] profile slot of each counted token, -1: none
        # layer -> side -> the entries this batch put into the dense top-k: (neuron, slot, window
        # positions, inside), each [s] or [s, W]; the variants fill their re-read windows there
        self.pending: dict[int, dict[str, tuple[torch.Tensor, ...]]] = {}

    def start(self, batch: BatchTensors) -> None:
        self.batch = batch
        slots = self.slot_of_token[batch.token_ids]
        self.counted_slots = slots
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
        """For counted rows [s]: flat padded positions of their windows [s, W] and which of them
        lie inside the document and after the start token."""
        batch = self.batch
        assert batch is not None
        position = batch.position.index_select(0, rows)[:, None] + self.offsets  # [s, W]
        inside = (position >= 1) & (position < batch.doc_length.index_select(0, rows)[:, None])
        flat = (batch.flat.index_select(0, rows)[:, None] + self.offsets).clamp_(0, batch.input_ids.numel() - 1)
        return flat, inside

    @staticmethod
    def _gather(flat_neurons: torch.Tensor, neuron: torch.Tensor, flat: torch.Tensor, inside: torch.Tensor
                ) -> torch.Tensor:
        """Activations [s, W] of each entry's neuron at its window positions (NaN outside)."""
        cells = flat * flat_neurons.shape[1] + neuron[:, None]  # [s, W] in the flattened [positions, N]
        return flat_neurons.reshape(-1).take(cells).float().masked_fill_(~inside, float("nan"))

    def _observe(self, model_id: str, layer: int, flat_neurons: torch.Tensor) -> None:
        batch = self.batch
        assert batch is not None
        stats = self.state.layers[model_id][layer]
        # a variant's pass reads the dense activations too, so both must suit the kernel
        if fused.enabled(flat_neurons) and (model_id == DENSE or fused.enabled(self.dense_kept[layer])):
            found = self._fused_pass(model_id, layer, flat_neurons, stats)
        else:
            counted = flat_neurons.index_select(0, batch.flat)  # [counted, N]
            stats.add_tokens(counted, batch.half, self.profile_sums)
            if model_id != DENSE:
                dense_counted = self.dense_kept[layer].index_select(0, batch.flat)
                self.state.cross[model_id][layer] += torch.linalg.vecdot(dense_counted, counted, dim=0).double()
            found = {side: batch_candidates(counted, batch.keys, stats.top[(batch.half, side)], sign)
                     for side, sign in zip(SIDES, (1, -1), strict=True)}
        if model_id != DENSE:
            dense_top = self.state.layers[DENSE][layer].top
            for side, (neuron, slot, flat, inside) in self.pending[layer].items():
                reread = dense_top[(batch.half, side)].payload[f"reread:{model_id}"]
                _put(reread, neuron, slot, self._gather(flat_neurons, neuron, flat, inside))
        entered: dict[str, tuple[torch.Tensor, ...]] = {}
        for side in SIDES:
            top = stats.top[(batch.half, side)]
            neuron, rows, scores = found[side]
            neuron, slot, entry = top.merge_entries(neuron, scores, batch.keys.index_select(0, rows))
            flat, inside = self._windows(rows.index_select(0, entry))  # windows of the entries that made it only
            _put(top.payload["window"], neuron, slot, self._gather(flat_neurons, neuron, flat, inside))
            entered[side] = (neuron, slot, flat, inside)
        if model_id == DENSE and self.variant_ids:
            self.dense_kept[layer] = flat_neurons
            self.pending[layer] = entered

    def _fused_pass(self, model_id: str, layer: int, flat_neurons: torch.Tensor, stats: LayerStats
                    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``fused.observe_columns`` for one model and layer: the sums in place, the candidates of
        both sides as ``batch_candidates`` gives them."""
        batch = self.batch
        assert batch is not None
        tops = [stats.top[(batch.half, side)] for side in SIDES]
        tiny = torch.finfo(torch.float32).tiny
        bounds = torch.stack([top.scores[:, -1] for top in tops]).clamp(min=tiny)  # [2, N], as batch_candidates
        capacity = CANDIDATE_CAP * self.k
        dense = cross = None
        if model_id != DENSE:  # the kernel adds Σ a_dense·a_variant, reading the dense tensor alongside
            dense, cross = self.dense_kept[layer], self.state.cross[model_id][layer]
        sums = {"sum": stats.sum, "sum_sq": stats.sum_sq, "sum_abs": stats.sum_abs, "max": stats.max,
                "min": stats.min, "histogram": stats.histogram}
        profile = stats.profile[batch.half] if self.profile_sums is not None else None
        assert self.counted_slots is not None, "start() sets them for the batch"
        counts, candidates = fused.observe_columns(flat_neurons, batch.flat, self.counted_slots, bounds, capacity,
                                                   sums, profile, dense, cross)
        return {side: loose_candidates(flat_neurons, batch.flat, batch.keys, counts[index], candidates[index],
                                       self.k, sign)
                for index, (side, sign) in enumerate(zip(SIDES, (1, -1), strict=True))}

    def finish(self) -> None:
        """After every model ran the batch."""
        self.pending.clear()
        self.dense_kept.clear()


def _put(payload: torch.Tensor, neuron: torch.Tensor, slot: torch.Tensor, values: torch.Tensor) -> None:
    """``payload[neuron, slot] = values`` for payload [N, k, W] and values [s, W]."""
    payload.view(-1, payload.shape[-1]).index_copy_(0, neuron * payload.shape[1] + slot, values)


def _log_probs(loaded: LoadedModel, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token log-probabilities from final hidden states [tokens, hidden]: [tokens, vocab] float32."""
    logits = loaded.model.get_output_embeddings()(hidden).float()
    cap = getattr(loaded.model.config, "final_logit_softcapping", None)
    if cap:  # Gemma 2/3 squash their logits after the head
        logits = torch.tanh(logits / cap) * cap
    return F.log_softmax(logits, dim=-1)


def _token_kl(dense: LoadedModel, variants: dict[str, LoadedModel], hidden: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
    """KL(p_dense || p_variant) per counted position, variant -> [counted], from each model's final
    hidden states (``hidden``: model id -> [counted, hidden]). The LM head runs here, on
    ``_KL_CHUNK`` tokens at a time and on counted positions only, so no [tokens, vocab] tensor of
    the whole batch exists (at 4096 tokens and a 49k vocabulary that is 0.8 GB per tensor)."""
    counted = hidden[DENSE].shape[0]
    kl = {vid: torch.empty(counted, dtype=torch.float32, device=hidden[DENSE].device) for vid in variants}
    for start in range(0, counted, _KL_CHUNK):
        dense_log_probs = _log_probs(dense, hidden[DENSE][start:start + _KL_CHUNK])  # [chunk, vocab]
        for vid, loaded in variants.items():
            variant_log_probs = _log_probs(loaded, hidden[vid][start:start + _KL_CHUNK])
            kl[vid][start:start + _KL_CHUNK] = F.kl_div(variant_log_probs, dense_log_probs, log_target=True,
                                                         reduction="none").sum(-1)
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
    final: dict[str, torch.Tensor] = {}  # the LM head's input of the forward that just ran
    in_forward = [False]  # _token_kl calls the heads too: only a forward's call is stopped

    def head_input(_module, args: tuple) -> None:
        if in_forward[0]:
            final["hidden"] = args[0]  # [rows, length, hidden]
            raise StopForward  # the head runs in _token_kl, chunked, on counted positions only

    started = time.perf_counter()
    with ExitStack() as hooks:
        for model_id, loaded in models.items():
            hooks.enter_context(neuron_hooks(loaded.model, loaded.adapter, {
                layer: observer.function(model_id, layer) for layer in range(inputs.layers)}))
        hooks.enter_context(pre_hooks({loaded.model.get_output_embeddings(): head_input
                                       for loaded in models.values()}))
        done = 0
        for number, batch in enumerate(batches):
            if should_stop is not None and should_stop():
                raise BuildStopped("the index build was stopped; nothing was written")
            report(done / total, f"batch {number + 1}/{len(batches)}")
            tensors = batch_tensors(batch, corpus, pad_id, device)
            observer.start(tensors)
            hidden = {}
            for model_id, loaded in models.items():
                in_forward[0] = True
                call_until_stopped(loaded.model, input_ids=tensors.input_ids,
                                   attention_mask=tensors.attention_mask, use_cache=False)
                in_forward[0] = False
                states = final.pop("hidden")
                hidden[model_id] = states.reshape(-1, states.shape[-1]).index_select(0, tensors.flat)  # [counted, H]
            observer.finish()
            if variants:
                for model_id, kl in _token_kl(dense, variants, hidden).items():
                    scores, keys, _ = batch_top(kl[:, None], tensors.keys, KL_TOP)
                    state.kl[model_id].add_tokens(kl, tensors.token_ids, TopK(scores, keys))
            del hidden
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

