"""The one hook mechanism: forward-pre-hooks that are always removed, and one way to cut a forward short.

Everything that looks into or changes a forward pass goes through here: the pruning engine
(decoder-layer inputs, linear-input statistics), NSA capture and scoring, ablation and any
activation patching. ``neuron_hooks`` gives each caller the neuron tensor (the input of a
layer's MLP down projection, see ``backend.models.adapters``) as ``[batch, tokens, neurons]``
for every family; a callback may return a replacement of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from backend.errors import UserError
from backend.models.adapters import ArchitectureAdapter

# [batch, tokens, neurons] -> None (observe only) or a replacement tensor of the same shape
NeuronFn = Callable[[torch.Tensor], torch.Tensor | None]


class StopForward(BaseException):
    """Raised by a hook when the rest of the forward pass is not needed.

    A ``BaseException``, like ``KeyboardInterrupt``: model code or a caller's ``except
    Exception`` cannot swallow it and carry on computing. ``call_until_stopped`` catches it.
    """


def call_until_stopped(module: nn.Module, *args, **kwargs) -> object | None:
    """``module(*args, **kwargs)``, or None when a hook raised ``StopForward`` during the call."""
    try:
        return module(*args, **kwargs)
    except StopForward:
        return None


@contextmanager
def pre_hooks(hooks: Mapping[nn.Module, Callable], *, with_kwargs: bool = False) -> Iterator[None]:
    """Forward-pre-hooks on modules for the duration of a ``with`` block, removed however it ends.

    A hook is ``fn(module, args)`` (``fn(module, args, kwargs)`` with ``with_kwargs``) and
    returns None to leave the inputs alone, or the replaced ``args`` (``(args, kwargs)``).
    """
    handles = []
    try:
        for module, hook in hooks.items():
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


def checked_layers(model: nn.Module, adapter: ArchitectureAdapter, layers) -> list[int]:
    """Sorted distinct layer indices, all layers for None; UserError for one out of range."""
    count = len(adapter.decoder_layers(model))
    wanted = list(range(count)) if layers is None else sorted(set(layers))
    bad = [index for index in wanted if not 0 <= index < count]
    if bad:
        raise UserError(f"layer(s) {bad} out of range: this model has layers 0..{count - 1}")
    return wanted


@contextmanager
def neuron_hooks(model: nn.Module, adapter: ArchitectureAdapter,
                 functions: Mapping[int, NeuronFn]) -> Iterator[None]:
    """Call ``functions[layer](neurons)`` on each forward's neuron tensor of that layer.

    ``neurons`` is ``[batch, tokens, neurons]`` in every family (OPT's flattened layout is
    undone by the adapter). A function returning a tensor replaces the neurons (the down
    projection then computes on it); one returning None observes only. A function may raise
    ``StopForward`` to end the forward pass there. All hooks are removed on exit.
    """
    decoder_layers = adapter.decoder_layers(model)
    checked_layers(model, adapter, functions)
    token_shapes: dict[int, torch.Size] = {}  # layer -> [batch, tokens] of its current input

    def shape_recorder(index: int):
        def record(_layer, args, kwargs) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]  # [batch, tokens, hidden]
            token_shapes[index] = hidden.shape[:-1]

        return record

    def neuron_hook(index: int, function: NeuronFn):
        def apply(_module, args: tuple):
            neurons = args[0]  # the module's layout: [batch, tokens, neurons] or [batch*tokens, neurons]
            replaced = function(adapter.batched_neurons(neurons, token_shapes.get(index)))
            if replaced is None:
                return None
            return (replaced.reshape(neurons.shape), *args[1:])

        return apply

    with ExitStack() as stack:
        if adapter.mlp_flattens_tokens:
            stack.enter_context(pre_hooks(
                {decoder_layers[index]: shape_recorder(index) for index in functions}, with_kwargs=True))
        stack.enter_context(pre_hooks({
            adapter.neuron_module(decoder_layers[index]): neuron_hook(index, function)
            for index, function in functions.items()
        }))
        yield
