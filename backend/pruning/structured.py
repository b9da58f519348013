"""What every structured (MLP-neuron) method shares: the selection contract, compensation, bookkeeping.

A structured method removes whole MLP neurons (docs/architecture.md: the input of the down
projection). Each one is a module of ``backend/pruning/methods/`` holding its options model and
its **selection function**, a ``NeuronSelector``: given one layer's MLP (``MlpLayer``: the down
projection, the input projections, the neuron statistics) and how many neurons go, it says which,
and how the kept ones make up for them (``NeuronPruning``). Its registry entry is
``METHOD = neuron_method(name, description, select, options)``.

This module never looks at a method's name: it counts the neurons to remove (exactly
``round(ratio · n)`` per layer), calls the selection, checks what came back, and turns it into
the engine's changes (``neuron_removal``: the removed neurons' rows of the input projections
and columns of the down projection are zeroed; a compensated down weight or bias replaces the
old one first). ``fold_in_compensation`` is the shared least-squares compensation
(neuron_math's fold-in, with the mean into the down bias where there is one);
``validated_compensation`` chooses its ridge by K-fold validation over the calibration windows
and falls back to mean-only compensation where the fold-in does not predict held-out windows
better (fold_in_validation.py).

The data methods (``data=True``) take ``sink_tokens`` k (``NeuronDataOptions``): the first k
tokens of every calibration window are left out of the neuron statistics (attention sinks,
docs/pitfalls.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import torch
from pydantic import Field

from backend.errors import UserError
from backend.pruning import fold_in_validation, neuron_math
from backend.pruning.registry import (
    InputNeeds,
    LayerToPrune,
    MethodOptions,
    NoOptions,
    Pruned,
    PruningMethod,
    neuron_removal,
)
from backend.pruning.spec import SparsitySpec, pruned_count
from backend.pruning.stats import Moments

# Relative dampening of the selections' H⁻¹ / C⁻¹ (λ = damp · mean diag H), as SparseGPT's percdamp.
DEFAULT_DAMP = 0.01
DEFAULT_VALIDATION_FOLDS = 4


class NeuronDataOptions(MethodOptions):
    """Options of the neuron methods calibrated on data (their statistics skip sink tokens)."""

    sink_tokens: int = Field(default=0, ge=0, le=64,
                             description="leave the first k tokens of every calibration window out of "
                                         "the neuron statistics (attention sinks, docs/pitfalls.md)")


class CompensationOptions(NeuronDataOptions):
    """Options of the methods that can fold removed neurons into the kept ones."""

    compensate: bool = Field(default=True, description="fold the removed neurons into the kept ones "
                             "(least squares; the mean into the down bias where there is one)")
    damp: float = Field(default=DEFAULT_DAMP, ge=0, lt=1,
                        description="relative dampening λ = damp·mean(diag H) of the selection's H⁻¹ / C⁻¹")
    fold_in_ridge: float | None = Field(
        default=None, ge=0, le=100,
        description="relative ridge α of the fold-in (λ = α·mean(diag H)); default: chosen per layer by "
                    "K-fold validation over the calibration windows, mean-only where the fold-in does not help")
    validation_folds: int = Field(default=DEFAULT_VALIDATION_FOLDS, ge=2, le=16,
                                  description="folds of calibration windows for the fold-in's validation")


@dataclass(frozen=True)
class MlpLayer:
    """What a selection sees of one decoder layer's MLP. The tensors are the model's: read only."""

    index: int  # the decoder layer, for per-layer seeds (``layer_seed``)
    down_weight: torch.Tensor  # [out, n], a view of the down projection's weight
    down_bias: torch.Tensor | None  # [out], or None (LLaMA-family down_proj has none)
    input_weights: list[torch.Tensor]  # [[n, in], ...]: gate/up or fc1, row j feeds neuron j
    covariance: torch.Tensor | None  # [n, n] of the neurons over the calibration tokens (None: no data)
    mean: torch.Tensor | None  # [n]
    tokens: int  # calibration tokens behind covariance and mean
    folds: tuple[Moments, ...] = ()  # per fold of windows (methods asking for folds), for validation

    @property
    def neurons(self) -> int:
        return self.down_weight.shape[1]

    def calibrated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``covariance`` [n, n] and ``mean`` [n]; a data method's entry has them collected."""
        if self.covariance is None or self.mean is None:
            raise ValueError("this selection needs the neurons' covariance and mean: register it "
                             "with data=True")
        return self.covariance, self.mean


@dataclass
class NeuronPruning:
    """A selection's answer for one layer."""

    removed: torch.Tensor  # LongTensor [count]: distinct neuron indices, any order
    down_weight: torch.Tensor | None = None  # [out, n] new down projection (None: only zeroed)
    down_bias: torch.Tensor | None = None  # [out] new down bias (None: unchanged)
    info: dict = field(default_factory=dict)  # into the manifest's method_notes


OptionsT_contra = TypeVar("OptionsT_contra", bound=MethodOptions, contravariant=True)


class NeuronSelector(Protocol[OptionsT_contra]):
    """The contract of a structured method: ``select(layer, options, count) -> NeuronPruning``.

    Called once per decoder layer with 1 <= ``count`` < ``layer.neurons`` (a layer where the
    ratio rounds to 0 is left alone without a call). Must return exactly ``count`` distinct
    indices in ``removed`` and must not modify the layer's tensors. A new ``down_weight`` /
    ``down_bias`` is the method's compensation (``fold_in_compensation`` is the shared one);
    ``info["compensated"]`` defaults to whether one was given. Deterministic: a seed comes from
    the options and ``layer_seed``. ``options`` is the method's own validated options model.
    """

    def __call__(self, layer: MlpLayer, options: OptionsT_contra, count: int, /) -> NeuronPruning: ...


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` neurons of smallest score, ties by position.  scores [n] -> LongTensor [count]"""
    return torch.sort(scores, stable=True).indices[:count]


def layer_seed(seed: int, index: int) -> int:
    """Each layer's own draw from one user seed."""
    return seed * 100_003 + index


def ascending(removed: torch.Tensor) -> torch.Tensor:
    """``removed`` as an ascending LongTensor on the CPU (the order compensation and masks use)."""
    return torch.sort(removed.to(torch.long).cpu()).values


def fold_in_compensation(layer: MlpLayer, removed: torch.Tensor, damp: float) -> NeuronPruning:
    """The removed neurons folded into the kept ones by least squares (neuron_math.fold_in); where
    the down projection has a bias, the fit has an intercept and the mean goes into the bias."""
    covariance, mean = layer.calibrated()
    removed = ascending(removed)
    device_removed = removed.to(layer.down_weight.device)
    if layer.down_bias is not None:
        weight, increment = neuron_math.affine_fold_in(layer.down_weight, covariance, mean,
                                                       device_removed, damp)
        return NeuronPruning(removed, weight, layer.down_bias + increment, {"compensated": True})
    gram = neuron_math.neuron_gram(covariance, mean, layer.tokens)
    weight = neuron_math.fold_in(layer.down_weight, gram, device_removed, damp)
    return NeuronPruning(removed, weight, None, {"compensated": True})


def validated_compensation(layer: MlpLayer, removed: torch.Tensor,
                           options: CompensationOptions) -> NeuronPruning:
    """The fold-in with ``options.fold_in_ridge``, or with the ridge chosen by validation over the
    windows' folds: mean-only compensation (plain removal without a down bias) where no ridge
    predicts the held-out windows better. The choice goes into the manifest's method_notes."""
    removed = ascending(removed)
    if options.fold_in_ridge is not None:
        result = fold_in_compensation(layer, removed, options.fold_in_ridge)
        result.info["fold_in_ridge"] = options.fold_in_ridge
        return result
    if sum(1 for fold in layer.folds if fold.tokens) < 2:
        raise UserError("the validated fold-in needs at least 2 calibration windows (one per fold); "
                        "use more windows or set fold_in_ridge")
    choice = fold_in_validation.choose_ridge(layer.down_weight, list(layer.folds),
                                             removed.to(layer.down_weight.device),
                                             affine=layer.down_bias is not None)
    if choice.alpha is not None:
        result = fold_in_compensation(layer, removed, choice.alpha)
        result.info.update(choice.note())
        return result
    if layer.down_bias is None:  # nothing to carry the mean: the removed neurons just go
        return NeuronPruning(removed, info={"compensated": False, **choice.note()})
    _covariance, mean = layer.calibrated()
    bias = layer.down_bias + neuron_math.mean_bias(layer.down_weight, mean, removed.to(mean.device))
    return NeuronPruning(removed, None, bias, {"compensated": True, **choice.note()})


def _checked(name: str, result: NeuronPruning, count: int, neurons: int) -> torch.Tensor:
    """The selection's removed neurons, ascending; an error if they break the contract."""
    removed = ascending(result.removed)
    if removed.numel() != count or (count and (int(removed[0]) < 0 or int(removed[-1]) >= neurons
                                               or bool((removed[1:] == removed[:-1]).any()))):
        raise ValueError(f"{name}: the selection must return {count} distinct neurons of 0..{neurons - 1}, "
                         f"got {removed.numel()}")
    return removed


def neuron_method(name: str, description: str, select: NeuronSelector[Any],
                  options: type[MethodOptions] = NoOptions, *, data: bool = True) -> PruningMethod[Any]:
    """The registry entry of a structured method whose selection is ``select``.

    ``data``: the selection reads the neurons' covariance and mean (calibration windows are
    built; ``options`` must then derive from ``NeuronDataOptions``); False: weights only.
    """
    if data and not issubclass(options, NeuronDataOptions):
        raise TypeError(f"{name}: a data method's options derive from NeuronDataOptions (sink_tokens)")

    def prune(layer: LayerToPrune, chosen: MethodOptions, spec: SparsitySpec) -> list[Pruned]:
        adapter = layer.adapter
        stats = layer.statistics.get(adapter.mlp_output)
        down = layer.linears[adapter.mlp_output]
        bias = getattr(down, "bias", None)
        if stats is not None and stats.tokens == 0:
            raise UserError(f"{name}: no calibration tokens left in layer {layer.index} "
                            f"(sink_tokens must be shorter than the windows)")
        down_weight = layer.weight(adapter.mlp_output)  # [out, n], a view of down.weight
        mlp = MlpLayer(layer.index, down_weight, None if bias is None else bias.detach(),
                       [layer.weight(linear) for linear in adapter.mlp_inputs],
                       None if stats is None else stats.covariance, None if stats is None else stats.mean,
                       0 if stats is None else stats.tokens, () if stats is None else tuple(stats.fold_moments()))
        count = pruned_count(mlp.neurons, spec.ratio)
        result = select(mlp, chosen, count) if count else NeuronPruning(torch.zeros(0, dtype=torch.long))
        removed = _checked(name, result, count, mlp.neurons)
        info = {"compensated": result.down_weight is not None or result.down_bias is not None,
                **result.info} if count else {}
        changes = neuron_removal(layer, removed.to(down_weight.device))
        for change in changes:
            if change.linear == adapter.mlp_output and change.param == "weight":
                change.new_value = result.down_weight  # None: only zeroed
                change.info = info
        if result.down_bias is not None:
            assert bias is not None, "a new down bias is only computed from an existing one"
            changes.append(Pruned(adapter.mlp_output, torch.zeros_like(bias, dtype=torch.bool),
                                  param="bias", new_value=result.down_bias))
        return changes

    prune.__wrapped__ = select  # type: ignore[attr-defined]  # the method's own code (code_version)
    needs = InputNeeds(linears="mlp_output", covariance=True)

    def needs_for(chosen: MethodOptions) -> InputNeeds:
        assert isinstance(chosen, NeuronDataOptions), "checked when the entry was made"
        validated = (isinstance(chosen, CompensationOptions) and chosen.compensate
                     and chosen.fold_in_ridge is None)
        folds = chosen.validation_folds if isinstance(chosen, CompensationOptions) and validated else 0
        return replace(needs, skip_leading=chosen.sink_tokens, folds=folds)

    return PruningMethod(name=name, description=description, prune=prune, options=options,
                         needs=needs if data else None, needs_for=needs_for if data else None,
                         structured=True, selection=select)
