"""The pruning-method registry: one entry per method, from which the CLI, the API and the engine work.

A method is one module holding its math (pure functions on tensors), one pydantic options model
(defaults, bounds, help text) and a ``METHOD = PruningMethod(...)`` entry; its module name is
one line of ``BUILTIN_METHOD_MODULES``. The CLI arguments (``backend.pruning.commands``), the
HTTP request (``PruneRequest.options`` validated here, ``GET /methods``) and the engine's
per-layer call all read this registry, so an option is declared once.

The engine calls ``method.prune(layer, options, spec)`` once per decoder layer, after
collecting the input statistics the method asks for (``needs``), and applies what it returns.
A structured (MLP-neuron) method's module defines a selection function instead and its entry is
``neuron_method(name, description, select, options)`` (``backend.pruning.structured``), which
keeps the selection as ``PruningMethod.selection``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from backend.errors import UserError
from backend.models.adapters import ArchitectureAdapter, weight_matrix
from backend.pruning.profile_options import PROFILE_FIELDS, WeightProfileOptions
from backend.pruning.protection import WeightGuard
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics

if TYPE_CHECKING:  # structured.py builds on this module: the type only
    from backend.pruning.structured import NeuronSelector

# One line per built-in method: its module defines METHOD.
BUILTIN_METHOD_MODULES = (
    "backend.pruning.methods.magnitude",
    "backend.pruning.methods.wanda",
    "backend.pruning.methods.sparsegpt",
    "backend.pruning.methods.ria",
    "backend.pruning.methods.mi",
    "backend.pruning.methods.random_neurons",
    "backend.pruning.methods.magnitude_neurons",
    "backend.pruning.methods.flap",
    "backend.pruning.methods.structured_obs",
    "backend.pruning.methods.shortgpt",
    "backend.pruning.methods.mi_prun",
    "backend.pruning.methods.random_blocks",
)


class MethodOptions(BaseModel):
    """Base of every method's options: unknown names are refused, values are checked on input."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(MethodOptions):
    """A method without options."""


@dataclass(frozen=True)
class InputNeeds:
    """Which calibration statistics the engine collects per layer before calling ``prune``.

    ``linears``: "all" = every prunable linear's input (linears reading one input share one
    accumulator); "mlp_output" = only the neurons (the MLP down projection's input).
    """

    linears: Literal["all", "mlp_output"] = "all"
    hessian: bool = False  # 2XXᵀ/n (SparseGPT, OBS-style methods)
    covariance: bool = False  # covariance and mean (neuron redundancy)
    skip_leading: int = 0  # leave the first k positions of every window out (attention sinks)
    folds: int = 0  # covariance also per fold of windows (window w in fold w mod folds), for validation
    mean: bool = False  # the mean input alone (DSnoT's E[X]); the covariance brings its own


@dataclass
class LayerToPrune:
    """What a method sees of one decoder layer. Weights are ``[out, in]`` views of the modules."""

    index: int
    linears: dict[str, nn.Module]  # prunable linears by name relative to the layer
    statistics: dict[str, InputStatistics]  # per linear named in ``needs``; shared inputs share one
    adapter: ArchitectureAdapter
    # Protected weights per linear (backend.pruning.protection); None: nothing protected here.
    guard: dict[str, WeightGuard] | None = None

    def weight(self, name: str) -> torch.Tensor:
        return weight_matrix(self.linears[name])  # [out, in]

    def guard_of(self, name: str) -> WeightGuard | None:
        return None if self.guard is None else self.guard.get(name)

    def input_groups(self) -> list[list[str]]:
        """The linears grouped by shared statistics (the same input), in the layer's order."""
        groups: dict[int, list[str]] = {}
        for name in self.linears:
            key = id(self.statistics[name]) if name in self.statistics else id(name)
            groups.setdefault(key, []).append(name)
        return list(groups.values())


@dataclass
class Pruned:
    """One parameter change: zero ``mask`` in ``linear``'s ``param`` (and write ``new_value`` first).

    ``mask``: ``[out, in]`` for a weight, ``[out]`` for a bias; True = pruned. ``new_value``:
    the updated tensor in the same layout (SparseGPT's weight update), or None to only zero; it
    is handed over to the engine, which zeroes it at ``mask`` in place and keeps it for the writer
    (so it must be a tensor of its own, not a view of the model's parameters).
    """

    linear: str
    mask: torch.Tensor
    param: Literal["weight", "bias"] = "weight"
    new_value: torch.Tensor | None = None
    info: dict = field(default_factory=dict)


# A method's own options class: its ``prune`` and ``check`` take that class, not the base.
OptionsT = TypeVar("OptionsT", bound=MethodOptions)

LayerPruner = Callable[[LayerToPrune, OptionsT, SparsitySpec], list[Pruned]]


@dataclass(frozen=True)
class PruningMethod(Generic[OptionsT]):
    """A registered method. ``needs`` None: no calibration data (magnitude)."""

    name: str
    description: str
    prune: LayerPruner[OptionsT]
    # A method left without options is a PruningMethod[NoOptions]; mypy cannot bind a TypeVar
    # through a default value, hence the ignore.
    options: type[OptionsT] = NoOptions  # type: ignore[assignment]
    needs: InputNeeds | None = InputNeeds()
    structured: bool = False  # removes whole MLP neurons: takes a 'neurons:' spec
    protects: bool = False  # honours LayerToPrune.guard (protected neurons, --protect)
    # Checks across options and spec, before any work: raise UserError.
    check: Callable[[OptionsT, SparsitySpec], None] | None = None
    # The statistics as the chosen options ask for them (None: always ``needs``).
    needs_for: Callable[[OptionsT], InputNeeds] | None = None
    # A structured method's selection (backend.pruning.structured.NeuronSelector), which ``prune``
    # wraps: which neurons of a layer go and how the kept ones compensate.
    selection: NeuronSelector[OptionsT] | None = None
    # Depth methods remove whole decoder blocks (backend.pruning.depth): ``blocks(context, options)``
    # returns the block indices to drop and the per-block scores; ``prune`` is then never called.
    blocks: Callable[..., Any] | None = None

    def __post_init__(self) -> None:
        # Every weight method also takes the sparsity profile and the refinement (OWL, DSnoT),
        # declared once in backend.pruning.profile_options.
        if self.prunes_weights and not issubclass(self.options, WeightProfileOptions):
            object.__setattr__(self, "options", with_weight_profile(self.options))

    @property
    def depth(self) -> bool:
        return self.blocks is not None

    @property
    def prunes_weights(self) -> bool:
        """Unstructured / N:M weight pruning: takes a sparsity profile and a refinement."""
        return not self.structured and not self.depth

    @property
    def needs_calibration(self) -> bool:
        return self.needs is not None

    def input_needs(self, options: OptionsT) -> InputNeeds | None:
        """What the engine collects for ``options`` (an option such as sink_tokens can change it)."""
        needs = self.needs if self.needs is None or self.needs_for is None else self.needs_for(options)
        if getattr(options, "refine", "none") == "dsnot":
            # DSnoT's swaps are checked against the exact error on the calibration inputs: the
            # second moments of every linear's input (the Hessian) and their mean.
            needs = replace(needs or InputNeeds(), linears="all", hessian=True, mean=True)
        return needs

    def uses_calibration(self, options: OptionsT) -> bool:
        """Whether ``options`` make this method read calibration data (OWL and DSnoT always do)."""
        return (self.input_needs(options) is not None
                or getattr(options, "sparsity_profile", "uniform") != "uniform")

    def parse_options(self, values: dict | None) -> OptionsT:
        """The one validation path of options (CLI, HTTP, Python): UserError naming the problem."""
        given = [name for name in PROFILE_FIELDS if name in (values or {})]
        if given and not self.prunes_weights:
            kind = "a structured (neuron)" if self.structured else "a depth (block)"
            raise UserError(f"{given[0]} applies to unstructured and N:M weight methods; {self.name!r} is "
                            f"{kind} method")
        try:
            return self.options.model_validate(values or {})
        except ValidationError as exc:
            problems = "; ".join(_problem(error) for error in exc.errors())
            raise UserError(f"{self.name}: {problems}") from None

    def dump_options(self, options: OptionsT) -> dict:
        """The options as JSON for the variant id and manifest; the profile / refinement fields only
        where they differ from their defaults, so a uniform, unrefined variant keeps its old identity."""
        dumped = options.model_dump(mode="json")
        defaults = {name: info.default for name, info in WeightProfileOptions.model_fields.items()}
        return {name: value for name, value in dumped.items()
                if name not in defaults or value != defaults[name]}

    def check_request(self, options: OptionsT, spec: SparsitySpec) -> None:
        """UserError when ``spec`` does not suit the method or the options do not suit ``spec``."""
        if self.depth:  # the blocks to drop are an option (--drop-blocks); any spec is ignored
            if self.check is not None:
                self.check(options, spec)
            return
        if self.structured != (spec.kind == "neurons"):
            raise UserError(
                f"method {self.name!r} takes --neuron-ratio (sparsity 'neurons:R')" if self.structured
                else f"method {self.name!r} takes --sparsity or --pattern, not --neuron-ratio"
            )
        if isinstance(options, WeightProfileOptions):
            from backend.pruning.owl import check_owl

            check_owl(options, spec)
        if self.check is not None:
            self.check(options, spec)

    def describe(self) -> dict:
        """JSON for GET /methods and `prunelens methods`."""
        return {"name": self.name, "description": self.description, "structured": self.structured,
                "depth": self.depth,
                "needs_calibration": self.needs_calibration, "protects": self.protects,
                "options": self.options.model_json_schema()}


def with_weight_profile(options: type[OptionsT]) -> type[OptionsT]:
    """``options`` joined with the OWL / DSnoT fields: the model a weight method validates with.

    The joined class keeps the method's module, so the variant's code version still hashes the
    method's own source file (``backend.pruning.config.code_version``)."""
    joined = type(options.__name__, (options, WeightProfileOptions),
                  {"__module__": options.__module__, "__doc__": options.__doc__})
    return cast(type[OptionsT], joined)


def _problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ()))
    message = "unknown option" if error.get("type") == "extra_forbidden" else error.get("msg", "invalid")
    return f"{where}: {message}" if where else message


# Any: the registry holds methods of different options classes; each parses its own.
_REGISTRY: dict[str, PruningMethod[Any]] = {}
_loaded: set[str] = set()  # built-in modules already registered


def register(method: PruningMethod[OptionsT]) -> PruningMethod[OptionsT]:
    """Add a method (a later registration of the same name replaces the earlier one)."""
    _load_builtins()  # built-in methods keep the first places in listings
    _REGISTRY[method.name] = method
    return method


def methods() -> dict[str, PruningMethod[Any]]:
    """All registered methods by name, built-in ones first."""
    _load_builtins()
    return dict(_REGISTRY)


def _load_builtins() -> None:
    for module in BUILTIN_METHOD_MODULES:
        if module not in _loaded:
            _loaded.add(module)
            method = importlib.import_module(module).METHOD
            _REGISTRY[method.name] = method


def get_method(name: str) -> PruningMethod[Any]:
    known = methods()
    if name not in known:
        raise UserError(f"unknown method {name!r}; choose from {', '.join(known)}")
    return known[name]


# ----------------------------------------------------------------------------- building blocks


MaskOf = Callable[[torch.Tensor, InputStatistics | None, OptionsT, SparsitySpec, WeightGuard | None],
                  torch.Tensor]


def each_weight(mask_of: MaskOf[OptionsT]) -> LayerPruner[OptionsT]:
    """A layer pruner from ``mask_of(weight [out, in], its input statistics, options, spec, guard)
    -> mask``; ``guard`` is the linear's protected weights or None (the method must honour it,
    see ``backend.pruning.protection.guarded_mask_for_spec``)."""

    def prune(layer: LayerToPrune, options: OptionsT, spec: SparsitySpec) -> list[Pruned]:
        return [Pruned(name, mask_of(layer.weight(name), layer.statistics.get(name), options, spec,
                                     layer.guard_of(name)))
                for name in layer.linears]

    # The method's own code, for backend.pruning.config.code_version (inspect.unwrap); a function
    # takes attributes, but mypy knows only the Callable type, hence the ignore.
    prune.__wrapped__ = mask_of  # type: ignore[attr-defined]
    return prune


def neuron_removal(layer: LayerToPrune, removed: torch.Tensor) -> list[Pruned]:
    """Masks removing whole neurons (indices ``removed``): their rows (and bias entries) in the MLP
    input projections, their columns in the output projection."""
    adapter = layer.adapter
    changes = []
    for name in (*adapter.mlp_inputs, adapter.mlp_output):
        module = layer.linears[name]
        mask = torch.zeros(layer.weight(name).shape, dtype=torch.bool, device=layer.weight(name).device)
        if name == adapter.mlp_output:
            mask[:, removed] = True
        else:
            mask[removed, :] = True
            if getattr(module, "bias", None) is not None:
                bias_mask = torch.zeros_like(cast(torch.Tensor, module.bias), dtype=torch.bool)
                bias_mask[removed] = True
                changes.append(Pruned(name, bias_mask, param="bias"))
        changes.append(Pruned(name, mask))
    return changes
