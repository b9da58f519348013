"""Structured MLP-neuron pruning methods: which neurons of a layer go, and how the rest compensate.

Every method sees one decoder layer's MLP: the down projection ``W`` ``[out, n]`` (its bias if
any), the input projections' weights (rows = neurons) and the neuron statistics (covariance,
mean, token count, see stats.InputStatistics). It returns the removed neurons (exactly
``round(ratio · n)``, ascending) and, when it compensates, the new down weight and bias. The
engine then zeroes the removed neurons' rows of the input projections and columns of ``W``.

    random-neurons       uniform random neurons (seeded), no compensation: the floor to beat
    magnitude-neurons    smallest ‖weights of the neuron‖₂ (down column, gate/up rows), no data
    flap                 smallest Var(h_j)·‖W_j‖² (An et al. 2024); the bias takes W_R μ_R where
                         the down projection has one
    structured-obs       greedy ZipLM/SlimGPT OBS with H⁻¹ updates; fold-in on by default
    mi                   the paper's pairwise-MI threshold rule (arXiv 2406.00030) or the joint
                         Gaussian MI; least-squares fold-in + mean correction on by default;
                         ``weigh_output`` (ours) ranks by the output the kept neurons cannot carry

The data methods take ``sink_tokens`` k: the first k tokens of every calibration window are left
out of the neuron statistics (attention sinks, docs/pitfalls.md).

Compensation is neuron_math's fold-in (see there for the mean and the bias). Each method is one
registry module (random_neurons, magnitude_neurons, flap, structured_obs, mi) holding its options
model and ``METHOD = neuron_method(...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from pydantic import Field

from backend.errors import UserError
from backend.pruning import neuron_math
from backend.pruning.registry import (
    InputNeeds,
    LayerToPrune,
    MethodOptions,
    Pruned,
    PruningMethod,
    neuron_removal,
)
from backend.pruning.spec import SparsitySpec, pruned_count

NEURON_METHODS = ("random-neurons", "magnitude-neurons", "flap", "structured-obs", "mi")
# Relative ridge of the fold-in and of OBS' H⁻¹ (λ = damp · mean diag H), as SparseGPT's percdamp.
DEFAULT_DAMP = 0.01


class NeuronDataOptions(MethodOptions):
    """Options of the neuron methods calibrated on data (flap, structured-obs, mi)."""

    sink_tokens: int = Field(default=0, ge=0, le=64,
                             description="leave the first k tokens of every calibration window out of "
                                         "the neuron statistics (attention sinks, docs/pitfalls.md)")


class CompensationOptions(NeuronDataOptions):
    """Options of the methods that can fold removed neurons into the kept ones."""

    compensate: bool = Field(default=True, description="fold the removed neurons into the kept ones "
                             "(least squares; the mean into the down bias where there is one)")
    damp: float = Field(default=DEFAULT_DAMP, ge=0, lt=1,
                        description="relative ridge λ = damp·mean(diag H) of the fold-in and of H⁻¹")


@dataclass(frozen=True)
class NeuronOptions:
    compensate: bool | None = None  # None: the method's default (on for structured-obs and mi)
    damp: float = DEFAULT_DAMP
    estimator: str = "pairwise"  # mi: "pairwise" (the paper) or "joint" (-½ log(1 - R²_j))
    threshold: float | None = None  # mi pairwise: starting Tr in nats (None: the largest MI)
    victim: str = "less-output"  # mi pairwise: which member of a redundant pair goes
    weigh_output: bool = False  # mi: rank by the output the kept neurons cannot reproduce
    seed: int = 0
    # Greedy removals per H⁻¹ downdate (structured-obs, mi joint): 1 is the exact greedy; a block
    # of n/128 neurons costs ~n/128 times fewer passes over the n x n inverse.
    block: int | None = None


@dataclass
class NeuronPruning:
    removed: torch.Tensor  # LongTensor [removed], ascending
    down_weight: torch.Tensor | None = None  # [out, n] new down projection (None: only zeroed)
    down_bias: torch.Tensor | None = None  # [out] new bias (None: unchanged)
    info: dict = field(default_factory=dict)


def _compensates(method: str, options: NeuronOptions) -> bool:
    if options.compensate is not None:
        return options.compensate
    return method in ("structured-obs", "mi", "flap")


def prune_layer_neurons(method: str, down_weight: torch.Tensor, down_bias: torch.Tensor | None,
                        input_weights: list[torch.Tensor], covariance: torch.Tensor | None,
                        mean: torch.Tensor | None, tokens: int, ratio: float,
                        options: NeuronOptions = NeuronOptions()) -> NeuronPruning:
    """One layer's neuron pruning.

    down_weight [out, n], down_bias [out] or None, input_weights [[n, in], ...] (gate/up or fc1),
    covariance [n, n] and mean [n] of the neurons over ``tokens`` calibration tokens (None for
    the data-free methods).
    """
    if method not in NEURON_METHODS:
        raise ValueError(f"unknown neuron method {method!r}; choose from {', '.join(NEURON_METHODS)}")
    neurons = down_weight.shape[1]
    count = pruned_count(neurons, ratio)
    compensate = _compensates(method, options)
    if count == 0:
        return NeuronPruning(torch.zeros(0, dtype=torch.long))
    folded = None
    if method == "random-neurons":
        generator = torch.Generator().manual_seed(options.seed)
        removed = torch.randperm(neurons, generator=generator)[:count]
    elif method == "magnitude-neurons":
        energy = down_weight.float().pow(2).sum(dim=0).cpu()
        for weight in input_weights:
            energy += weight.float().pow(2).sum(dim=1).cpu()
        removed = torch.sort(energy, stable=True).indices[:count]
    else:
        covariance, mean = _calibrated(method, covariance, mean)
        if method == "flap":
            scores = neuron_math.flap_scores(torch.diagonal(covariance), down_weight).cpu()
            removed = torch.sort(scores, stable=True).indices[:count]
        elif method == "structured-obs":
            gram = neuron_math.neuron_gram(covariance, mean, tokens)
            removed, folded = neuron_math.greedy_neuron_removal(down_weight, gram, count, damp=options.damp,
                                                                block=_block(options, neurons))
        else:
            removed = _mi_selection(down_weight, covariance, mean, count, options)
    removed = torch.sort(removed.to(torch.long).cpu()).values
    if not compensate:
        return NeuronPruning(removed, info={"compensated": False})
    covariance, mean = _calibrated(method, covariance, mean)
    if method == "flap":
        if down_bias is None:  # nothing to carry the mean: FLAP reduces to its score here
            return NeuronPruning(removed, info={"compensated": False, "reason": "no down bias"})
        bias = down_bias + neuron_math.mean_bias(down_weight, mean, removed.to(mean.device))
        return NeuronPruning(removed, None, bias, {"compensated": True})
    if folded is not None:  # structured-obs: the greedy already folded every removal in
        return NeuronPruning(removed, folded, None, {"compensated": True})
    device_removed = removed.to(down_weight.device)
    if down_bias is not None:
        weight, increment = neuron_math.affine_fold_in(down_weight, covariance, mean, device_removed,
                                                       options.damp)
        return NeuronPruning(removed, weight, down_bias + increment, {"compensated": True})
    gram = neuron_math.neuron_gram(covariance, mean, tokens)
    weight = neuron_math.fold_in(down_weight, gram, device_removed, options.damp)
    return NeuronPruning(removed, weight, None, {"compensated": True})


def _calibrated(method: str, covariance: torch.Tensor | None,
                mean: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``covariance`` [n, n] and ``mean`` [n], which the data methods and the fold-in require."""
    if covariance is None or mean is None:
        raise ValueError(f"{method} needs the neurons' covariance and mean (calibration data)")
    return covariance, mean


def _block(options: NeuronOptions, neurons: int) -> int:
    return options.block if options.block is not None else max(1, neurons // 128)


def _mi_selection(down_weight, covariance, mean, count, options: NeuronOptions) -> torch.Tensor:
    from backend.pruning.methods.mi_neurons import (
        mi_threshold_removal,
        output_energy,
        unexplained_output_removal,
    )

    if options.estimator == "pairwise":
        if options.weigh_output:
            return unexplained_output_removal(covariance, mean, down_weight, count)
        return mi_threshold_removal(covariance, mean, count, threshold=options.threshold,
                                    seed=options.seed, victim=options.victim,
                                    output_energy=output_energy(covariance, mean, down_weight))
    if options.estimator == "joint":
        second_moment = torch.diagonal(covariance).double() + mean.double().pow(2)
        order, _ = neuron_math.greedy_neuron_removal(
            down_weight, covariance, count, damp=options.damp,
            criterion="unexplained-output" if options.weigh_output else "information",
            block=_block(options, down_weight.shape[1]), second_moment=second_moment)
        return order
    raise ValueError(f"unknown MI estimator {options.estimator!r}: use pairwise or joint")


def neuron_method(method: str, description: str, options: type[MethodOptions], *,
                  data: bool = True) -> PruningMethod:
    """The registry entry of one of NEURON_METHODS (``data`` False: no calibration windows)."""

    def prune(layer: LayerToPrune, chosen: MethodOptions, spec: SparsitySpec) -> list[Pruned]:
        adapter = layer.adapter
        stats = layer.statistics.get(adapter.mlp_output)
        down = layer.linears[adapter.mlp_output]
        bias = getattr(down, "bias", None)
        seed = getattr(chosen, "draw_seed", getattr(chosen, "pair_seed", 0))
        settings = NeuronOptions(
            compensate=getattr(chosen, "compensate", False), damp=getattr(chosen, "damp", DEFAULT_DAMP),
            estimator=getattr(chosen, "estimator", "pairwise"), threshold=getattr(chosen, "threshold", None),
            victim=getattr(chosen, "victim", "less-output"), weigh_output=getattr(chosen, "weigh_output", False),
            seed=seed * 100_003 + layer.index,  # each layer its own draw
            block=getattr(chosen, "block", None),
        )
        if stats is not None and stats.tokens == 0:
            raise UserError(f"{method}: no calibration tokens left in layer {layer.index} "
                            f"(sink_tokens must be shorter than the windows)")
        covariance, mean, tokens = ((stats.covariance, stats.mean, stats.tokens) if stats is not None
                                    else (None, None, 0))
        down_weight = layer.weight(adapter.mlp_output)  # [out, n], a view of down.weight
        result = prune_layer_neurons(
            method, down_weight, None if bias is None else bias.detach(),
            [layer.weight(name) for name in adapter.mlp_inputs],
            covariance, mean, tokens, spec.ratio, settings,
        )
        changes = neuron_removal(layer, result.removed.to(down_weight.device))
        for change in changes:
            if change.linear == adapter.mlp_output and change.param == "weight":
                change.new_value = result.down_weight  # None: only zeroed
                change.info = result.info
        if result.down_bias is not None:
            assert bias is not None, "a new down bias is only computed from an existing one"
            changes.append(Pruned(adapter.mlp_output, torch.zeros_like(bias, dtype=torch.bool),
                                  param="bias", new_value=result.down_bias))
        return changes

    needs = InputNeeds(linears="mlp_output", covariance=True)

    def needs_for(chosen: MethodOptions) -> InputNeeds:
        return replace(needs, skip_leading=getattr(chosen, "sink_tokens", 0))

    return PruningMethod(name=method, description=description, prune=prune, options=options,
                         needs=needs if data else None, needs_for=needs_for if data else None,
                         structured=True)
