"""Layer inputs for the layer-sequential engine: record them, gather statistics, run a layer.

``capture_decoder_inputs`` records what enters decoder layer 0 and each layer's own call
arguments; ``collect_statistics`` runs one layer over the calibration batches gathering its
linears' input statistics, stopping as soon as they are all seen; ``propagate`` produces the
next layer's inputs. All hooks go through ``backend.models.hooks``.
"""

from __future__ import annotations

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


def capture_decoder_inputs(model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor],
                           store_device: torch.device) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """Hidden states entering layer 0 per batch, and each layer's own call arguments per batch.

    Masks and rotary embeddings can differ per layer (Gemma's sliding-window layers), so each
    layer's arguments are recorded by forward-pre-hooks. Every batch runs to layer 0 only (the
    embeddings' cost). One window of the first batch is then run through every layer: where all
    layers receive what layer 0 receives (LLaMA, OPT, GPT-2 ...), each batch's layer-0
    arguments serve every layer; otherwise each batch is run through the dense layers once to
    record its own per-layer arguments.
    """
    hidden_inputs: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = []
    _, probe_calls = _recorded_calls(model, layers, batches[0][:1], len(layers) - 1)
    uniform = all(same_arguments(call, probe_calls[0]) for call in probe_calls[1:])
    for input_ids in batches:
        last = 0 if uniform else len(layers) - 1
        hidden, batch_calls = _recorded_calls(model, layers, input_ids, last)
        hidden_inputs.append(hidden.to(store_device))
        calls.append(batch_calls * len(layers) if uniform else batch_calls)
    return hidden_inputs, calls


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


# ----------------------------------------------------------------------------- statistics


def collect_statistics(layer: nn.Module, linears: dict[str, nn.Module], hidden: list[torch.Tensor],
                       calls: list[LayerCall], device: torch.device, *, hessian: bool,
                       covariance_of: frozenset[str] = frozenset()) -> dict[str, InputStatistics]:
    """Run the layer over every batch, accumulating each linear's input statistics.

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
                        x.shape[-1], device, hessian=hessian, covariance=name in covariance_of
                    )
                statistics[name].update(x)
            waiting.discard(name)
            if not waiting:  # what the layer computes after this linear is not needed
                raise StopForward

        return accumulate

    try:
        with torch.no_grad(), pre_hooks({module: hook_for(name) for name, module in linears.items()}):
            for batch_hidden, call in zip(hidden, calls, strict=True):
                seen.clear()
                waiting.update(linears)
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
