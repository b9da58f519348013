"""Layer inputs for the layer-sequential engine: record them, gather statistics, run a layer.

``capture_decoder_inputs`` records what enters decoder layer 0 and each layer's own call
arguments; ``collect_statistics`` runs one layer over the calibration batches gathering its
linears' input statistics, stopping as soon as they are all seen; ``propagate`` produces the
next layer's inputs. All hooks go through ``backend.models.hooks``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

from backend.models.hooks import StopForward, call_until_stopped, pre_hooks
from backend.pruning.stats import InputStatistics


@dataclass
class LayerCall:
    """The arguments one decoder layer receives for one batch of windows (besides its input)."""

    args: tuple
    kwargs: dict


def _recorded_calls(model: nn.Module, layers: nn.ModuleList, input_ids: torch.Tensor,
                    last: int) -> tuple[torch.Tensor, list[LayerCall]]:
    """One forward of ``input_ids`` ([batch, tokens]) stopped at layer ``last``: the hidden states
    entering layer 0 ([batch, tokens, hidden]) and the call arguments of layers 0..last."""
    hidden_in: list[torch.Tensor] = []
    calls: list[LayerCall] = []

    def recorder_for(index: int):
        def record(_layer, args: tuple, kwargs: dict) -> None:
            rest = dict(kwargs)
            hidden = args[0] if args else rest.pop("hidden_states")
            if index == 0:
                hidden_in.append(hidden.detach())
            calls.append(LayerCall(tuple(args[1:]), rest))
            if index == last:
                raise StopForward

        return record

    with pre_hooks({layers[index]: recorder_for(index) for index in range(last + 1)}, with_kwargs=True):
        call_until_stopped(model, input_ids=input_ids, use_cache=False)
    return hidden_in[0], calls


def same_arguments(first, second) -> bool:
    """Equal call arguments: tensors by value, containers element by element, the rest by ==."""
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (first is second or (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
                and first.shape == second.shape and first.dtype == second.dtype
                and torch.equal(first, second)))
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
        return len(first) == len(second) and all(map(same_arguments, first, second))
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same_arguments(first[k], second[k]) for k in first)
    if isinstance(first, LayerCall) and isinstance(second, LayerCall):
        return same_arguments(first.args, second.args) and same_arguments(first.kwargs, second.kwargs)
    try:
        return bool(first is second or first == second)
    except (TypeError, ValueError, RuntimeError):  # no usable ==: not provably the same
        return False


# (model, tokens per window) -> whether every layer gets layer 0's arguments; found once per model.
_SHARED_ARGUMENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layers_share_arguments(model: nn.Module, layers: nn.ModuleList, window: torch.Tensor) -> bool:
    """Whether every decoder layer receives the call arguments layer 0 receives.

    Hugging Face configs declare per-layer differences as ``layer_types`` (Gemma 2/3: sliding
    vs global attention); where declared, that decides. Otherwise one window ([1, tokens]) is
    run through the layers and their recorded arguments compared (once per model and length).
    """
    declared = getattr(getattr(model, "config", None), "layer_types", None)
    if declared:
        return len(set(declared)) == 1
    verdicts = _SHARED_ARGUMENTS.setdefault(model, {})
    if window.shape[-1] not in verdicts:
        verdicts[window.shape[-1]] = probe_shared_arguments(model, layers, window)
    return verdicts[window.shape[-1]]


def probe_shared_arguments(model: nn.Module, layers: nn.ModuleList, window: torch.Tensor) -> bool:
    """Run ``window`` ([1, tokens]) through the layers: do they all get layer 0's arguments?"""
    _, calls = _recorded_calls(model, layers, window, len(layers) - 1)
    return all(same_arguments(call, calls[0]) for call in calls[1:])


def capture_decoder_inputs(model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor],
                           store_device: torch.device) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """Hidden states entering layer 0 per batch, and each layer's own call arguments per batch.

    Masks and rotary embeddings can differ per layer (Gemma's sliding-window layers), so each
    layer's arguments are recorded by forward-pre-hooks. Where all layers receive what layer 0
    receives (LLaMA, OPT, GPT-2 ...; ``layers_share_arguments``), every batch runs to layer 0
    only (the embeddings' cost) and its layer-0 arguments serve every layer; otherwise each
    batch is run through the dense layers once to record its own per-layer arguments.
    """
    hidden_inputs: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = []
    shared = layers_share_arguments(model, layers, batches[0][:1])
    for input_ids in batches:
        hidden, batch_calls = _recorded_calls(model, layers, input_ids, 0 if shared else len(layers) - 1)
        hidden_inputs.append(hidden.to(store_device))
        calls.append(batch_calls * len(layers) if shared else batch_calls)
    return hidden_inputs, calls


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


# ----------------------------------------------------------------------------- statistics


def collect_statistics(layer: nn.Module, linears: dict[str, nn.Module], hidden: list[torch.Tensor],
                       calls: list[LayerCall], device: torch.device, *, hessian: bool,
                       covariance_of: frozenset[str] = frozenset(),
                       skip_leading: int = 0, folds: int = 0, mean: bool = False) -> dict[str, InputStatistics]:
    """Run the layer over every batch, accumulating each linear's input statistics.

    ``skip_leading`` k: the first k positions of every window are left out of the statistics
    (attention sinks); ``folds`` K > 0: the covariances are also kept per fold of windows
    (InputStatistics). For either, a linear whose input the layer flattened to [tokens, in] (OPT)
    gets it back as [windows, seq, in] first. ``mean``: keep the inputs' sum too (DSnoT reads
    the mean input); off by default, as it is one more pass over every batch.

    Linears fed by the same tensor (q/k/v, gate/up) share one accumulator: their statistics
    are identical, and a 7B layer's Hessians are too large to compute three times. Sharing is
    found per batch by tensor identity; the batch keeps a reference to every input it has seen
    so that a freed tensor's memory cannot be reused by a later input with the same address.

    The forward stops as soon as every linear has seen its input: the last linear's own product
    (the MLP's down projection, a quarter of a LLaMA layer's matrix work) and the residual add
    would be thrown away, since the next layer's inputs come from ``propagate`` after pruning.
    """
    leader_of: dict[str, str] = {}  # linear -> the first linear that saw the same input
    statistics: dict[str, InputStatistics] = {}
    seen: dict[tuple, tuple[str, torch.Tensor]] = {}
    waiting: set[str] = set()  # linears whose input this batch has not reached yet
    windows_shape: list[int] = []  # [windows, seq] of the batch running now

    def hook_for(name: str):
        def accumulate(_module, args):
            x = args[0]  # [..., in_features]
            key = (x.data_ptr(), tuple(x.shape), x.dtype)
            if key in seen:
                leader_of[name] = seen[key][0]
            else:
                seen[key] = (name, x)
                leader_of[name] = name
                if name not in statistics:
                    statistics[name] = InputStatistics(
                        x.shape[-1], device, hessian=hessian, covariance=name in covariance_of,
                        skip_leading=skip_leading, folds=folds if name in covariance_of else 0, mean=mean,
                    )
                statistics[name].update(x.reshape(*windows_shape, x.shape[-1]) if skip_leading or folds else x)
            waiting.discard(name)
            if not waiting:  # what the layer computes after this linear is not needed
                raise StopForward

        return accumulate

    try:
        with torch.no_grad(), pre_hooks({module: hook_for(name) for name, module in linears.items()}):
            for batch_hidden, call in zip(hidden, calls, strict=True):
                seen.clear()
                waiting.update(linears)
                windows_shape[:] = batch_hidden.shape[:2]
                call_until_stopped(layer, batch_hidden.to(device), *call.args, **call.kwargs)
    finally:
        seen.clear()
    return {name: statistics[leader] for name, leader in leader_of.items()}


def propagate(layer: nn.Module, hidden: list[torch.Tensor], calls: list[LayerCall],
              device: torch.device) -> list[torch.Tensor]:
    """The layer's outputs for every batch: the next layer's inputs (stored where inputs are)."""
    outputs = []
    with torch.no_grad():
        for batch_hidden, call in zip(hidden, calls, strict=True):
            out = _layer_output(layer(batch_hidden.to(device), *call.args, **call.kwargs))
            outputs.append(out.to(batch_hidden.device))
    return outputs
