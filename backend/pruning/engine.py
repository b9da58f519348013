"""The layer-sequential pruning engine: calibration -> per-layer statistics -> masks -> a variant.

For each decoder layer in order: run the calibration windows through it with hooks that
accumulate each prunable linear's input statistics (dense weights), compute the method's masks
(and SparseGPT's weight update) with the pure functions of the method modules, apply them, then
run the layer again so that the next layer sees the outputs of the *pruned* layer. Embeddings,
norms and lm_head are never touched. The dense weights are restored after the variant is
written, so one loaded model serves every variant.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import nn

import backend
from backend.errors import UserError
from backend.memory import keep_freed_memory
from backend.models.adapters import in_module_layout, weight_matrix
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics
from backend.pruning.variants import read_manifest, variant_exists, write_variant

ENGINE_VERSION = 1  # part of every variant id: bump when the engine's results change
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class MethodInfo:
    name: str
    description: str
    needs_calibration: bool = True
    needs_hessian: bool = False
    structured: bool = False  # removes whole MLP neurons (spec kind "neurons")
    options: tuple[str, ...] = ()


_NEURON_OPTIONS = ("compensate", "neuron_damp")  # structured methods, see pruning/structured.py
METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in (
        MethodInfo("magnitude", "|W|, one threshold per linear layer (baseline)", needs_calibration=False),
        MethodInfo("wanda", "|W_ij|·‖X_j‖₂, compared within each output row (Sun et al. 2023)"),
        MethodInfo("sparsegpt", "OBS mask + weight update from H = 2XXᵀ/n (Frantar & Alistarh 2023)",
                   needs_hessian=True, options=("blocksize", "percdamp")),
        MethodInfo("ria", "relative importance × ‖X_j‖₂^a (Zhang et al. 2024)",
                   options=("alpha", "channel_permutation")),
        MethodInfo("mi", "remove MLP neurons redundant by pairwise mutual information (arXiv "
                   "2406.00030), least-squares fold-in of the removed ones (structured)",
                   structured=True, options=_NEURON_OPTIONS + ("mi_estimator", "mi_threshold")),
        MethodInfo("random-neurons", "remove uniformly random MLP neurons (structured baseline)",
                   needs_calibration=False, structured=True, options=_NEURON_OPTIONS),
        MethodInfo("magnitude-neurons", "remove MLP neurons with the smallest weight norm (structured)",
                   needs_calibration=False, structured=True, options=_NEURON_OPTIONS),
        MethodInfo("flap", "remove MLP neurons of least Var(h_j)·‖W_j‖², mean into the bias (An et al. 2024)",
                   structured=True, options=_NEURON_OPTIONS),
        MethodInfo("structured-obs", "greedy structured OBS on MLP neurons with fold-in (ZipLM/SlimGPT)",
                   structured=True, options=_NEURON_OPTIONS),
    )
}


@dataclass(frozen=True)
class PruneConfig:
    """Everything that determines a variant; its hash is part of the variant id."""

    method: str
    calibration: str = "c4"
    spec: SparsitySpec = field(default_factory=lambda: SparsitySpec.unstructured(0.5))
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    alpha: float = 0.5  # RIA: exponent of the activation norm
    channel_permutation: bool = False  # RIA, N:M only
    blocksize: int = 128  # SparseGPT
    percdamp: float = 0.01  # SparseGPT
    batch_size: int | None = None  # windows per forward; does not change the result
    compensate: bool | None = None  # structured: fold-in / bias; None = the method's default
    neuron_damp: float = 0.01  # structured: relative ridge of the fold-in and OBS' H⁻¹
    mi_estimator: str = "pairwise"  # mi: "pairwise" (the paper's rule) or "joint"
    mi_threshold: float | None = None  # mi pairwise: starting threshold in nats (None: largest MI)

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.method]

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.info.structured != (self.spec.kind == "neurons"):
            raise UserError(
                f"method {self.method!r} takes --neuron-ratio" if self.info.structured
                else f"method {self.method!r} takes --sparsity or --pattern, not --neuron-ratio"
            )
        if self.info.needs_calibration and not self.calibration.startswith("file:"):
            from backend.data.sources import list_text_sets

            known = [entry["name"] for entry in list_text_sets()]
            if self.calibration not in known:
                raise UserError(f"unknown calibration set {self.calibration!r}; known: "
                                f"{', '.join(known)}, or file:PATH")
        if self.nsamples <= 0:
            raise UserError(f"nsamples must be positive, got {self.nsamples}")
        if self.seqlen <= 0:
            raise UserError(f"seqlen must be positive, got {self.seqlen}")
        if self.channel_permutation and not (self.method == "ria" and self.spec.kind == "nm"):
            raise UserError("channel permutation applies to RIA with an N:M pattern only")
        if self.method == "ria" and self.alpha < 0:
            raise UserError(f"alpha must be >= 0, got {self.alpha}")
        if self.info.structured and self.compensate and not self.info.needs_calibration:
            raise UserError(f"method {self.method!r} uses no calibration data, so it cannot "
                            "compensate (the fold-in needs the neurons' statistics)")
        if self.info.structured and not 0 <= self.neuron_damp < 1:
            raise UserError(f"neuron_damp must be in [0, 1), got {self.neuron_damp}")
        if self.mi_estimator not in ("pairwise", "joint"):
            raise UserError(f"mi_estimator must be pairwise or joint, got {self.mi_estimator!r}")
        if self.method == "sparsegpt" and (self.blocksize <= 0 or not 0 < self.percdamp < 1):
            raise UserError("sparsegpt needs blocksize > 0 and 0 < percdamp < 1")

    def options(self) -> dict:
        return {name: getattr(self, name) for name in self.info.options}


@dataclass
class VariantResult:
    variant_id: str
    manifest: dict
    reused: bool


# ----------------------------------------------------------------------------- identity


def calibration_identity(name: str) -> str:
    """A user file is identified by its content, so editing it gives a new variant id."""
    if name.startswith("file:"):
        path = Path(name[5:]).expanduser()
        if not path.is_file():
            raise UserError(f"calibration file not found: {path}")
        return f"file:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return name


def variant_identity(base: str, config: PruneConfig, seqlen: int) -> dict:
    uses_data = config.info.needs_calibration
    return {
        "engine": ENGINE_VERSION,
        "base_model": base,
        "method": config.method,
        "calibration": calibration_identity(config.calibration) if uses_data else "none",
        "spec": asdict(config.spec),
        "nsamples": config.nsamples if uses_data else 0,
        "seqlen": seqlen if uses_data else 0,
        # random-neurons draws its neurons from the seed even without calibration data
        "seed": config.seed if uses_data or config.method == "random-neurons" else 0,
        "options": config.options(),
    }


def variant_id_for(identity: dict, config: PruneConfig) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    spec = config.spec
    spec_slug = {"unstructured": f"s{spec.ratio:g}", "nm": f"{spec.n}of{spec.m}",
                 "neurons": f"n{spec.ratio:g}"}[spec.kind]
    calibration = identity["calibration"]
    calib_slug = "file" if calibration.startswith("file:") else calibration
    raw = f"{config.method}-{calib_slug}-{spec_slug}-{digest}".lower()
    return re.sub(r"[^a-z0-9._-]", "-", raw)


# ----------------------------------------------------------------------------- layer inputs


class _StopForward(Exception):
    """Raised by the last recorder: everything after the decoder stack is not needed."""


@dataclass
class LayerCall:
    """The arguments one decoder layer receives for one batch of windows (besides its input)."""

    args: tuple
    kwargs: dict


def capture_decoder_inputs(model: nn.Module, layers: nn.ModuleList, batches: list[torch.Tensor],
                           store_device: torch.device) -> tuple[list[torch.Tensor], list[list[LayerCall]]]:
    """Hidden states entering layer 0 per batch, and each layer's own call arguments per batch.

    Every decoder layer's forward is swapped for a recorder that keeps its arguments (masks and
    rotary embeddings can differ per layer, e.g. Gemma's sliding-window layers) and passes the
    hidden state through unchanged, so this costs the embeddings only.
    """
    hidden_inputs: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = []
    current: list[LayerCall] = []

    def recorder_for(index: int):
        def record(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            rest = args[1:] if args else ()
            if index == 0:
                hidden_inputs.append(hidden.detach().to(store_device))
            kwargs.pop("hidden_states", None)
            current.append(LayerCall(rest, kwargs))
            if index == len(layers) - 1:
                raise _StopForward
            return hidden

        return record

    for index, layer in enumerate(layers):
        layer.forward = recorder_for(index)
    try:
        for input_ids in batches:
            current = []
            try:
                model(input_ids=input_ids, use_cache=False)
            except _StopForward:
                pass
            calls.append(current)
    finally:
        for layer in layers:
            del layer.forward  # back to the class's forward
    return hidden_inputs, calls


def _layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


# ----------------------------------------------------------------------------- statistics


class _StatisticsComplete(Exception):
    """Raised by the last linear's hook: what the layer computes after that is not needed."""


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
            if not waiting:
                raise _StatisticsComplete

        return accumulate

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for batch_hidden, call in zip(hidden, calls, strict=True):
                seen.clear()
                waiting.update(linears)
                try:
                    layer(batch_hidden.to(device), *call.args, **call.kwargs)
                except _StatisticsComplete:
                    pass
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
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


# ----------------------------------------------------------------------------- per-linear pruning


@dataclass
class LinearOutcome:
    mask: torch.Tensor  # [out, in] bool, True = pruned
    new_weight: torch.Tensor | None = None  # SparseGPT only: the updated weight
    info: dict = field(default_factory=dict)


# Each pruner takes the [out, in] weights of the linears that read the same input (one linear, or
# q/k/v, gate/up) with their shared statistics, and returns one outcome per weight.


def _prune_magnitude(weights, _stats, config):
    from backend.pruning.magnitude import magnitude_mask

    return [LinearOutcome(magnitude_mask(weight, config.spec)) for weight in weights]


def _prune_wanda(weights, stats, config):
    from backend.pruning.wanda import wanda_mask

    return [LinearOutcome(wanda_mask(weight, stats.act_norm, config.spec)) for weight in weights]


def _prune_ria(weights, stats, config):
    from backend.pruning.ria import ria_mask

    outcomes = []
    for weight in weights:
        mask, permutation = ria_mask(weight, stats.act_norm, config.spec, alpha=config.alpha,
                                     channel_permutation=config.channel_permutation)
        outcomes.append(LinearOutcome(mask, info={"permuted": permutation is not None}))
    return outcomes


def _prune_sparsegpt(weights, stats, config):
    from backend.pruning.sparsegpt import sparsegpt_prune_together

    # Pruned together: one factorisation of the shared Hessian and one column loop for all.
    results = sparsegpt_prune_together(weights, stats.hessian, config.spec,
                                       blocksize=config.blocksize, percdamp=config.percdamp)
    return [LinearOutcome(result.mask, result.weight, {"damp": result.damp, "retries": result.retries})
            for result in results]


LINEAR_PRUNERS: dict[str, Callable] = {
    "magnitude": _prune_magnitude,
    "wanda": _prune_wanda,
    "ria": _prune_ria,
    "sparsegpt": _prune_sparsegpt,
}


def input_groups(linears: dict[str, nn.Module], stats: dict[str, InputStatistics]) -> list[list[str]]:
    """The linears grouped by shared statistics (the same input), in the layer's order."""
    groups: dict[int, list[str]] = {}
    for name in linears:
        key = id(stats[name]) if name in stats else id(name)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


# ----------------------------------------------------------------------------- the engine


def _default_batch_size(seqlen: int, device: torch.device) -> int:
    # About 16k tokens per forward on a GPU; on CPU bigger batches gain nothing and cost memory.
    return max(1, (16384 if device.type == "cuda" else 4096) // seqlen)


def _inputs_store(device: torch.device, nbytes: int) -> torch.device:
    """Keep layer inputs on the accelerator unless they would take over a quarter of its memory."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        if nbytes > free // 4:
            return torch.device("cpu")
    return device


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(module): name for name, module in model.named_modules()}


def create_variant(loaded, config: PruneConfig, *, progress: Progress | None = None,
                   settings=None) -> VariantResult:
    """Prune ``loaded`` with ``config``, write the variant, restore the dense weights.

    An existing variant with the same configuration is reused, not recomputed. ``settings``:
    whose cache holds the variants (default: the environment's).
    """
    from backend.data.windows import calibration_windows

    config.validate()
    keep_freed_memory()  # reuse activation buffers across layers instead of re-faulting them
    report = progress or (lambda _fraction, _message: None)
    seqlen = min(config.seqlen, loaded.max_length)
    identity = variant_identity(loaded.name, config, seqlen)
    variant_id = variant_id_for(identity, config)
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.decoder_layers(model)
    if len(layers) == 0 or not any(adapter.prunable_linears(layer) for layer in layers):
        raise UserError(f"{loaded.name} has no prunable layers (no decoder layers with linear modules)")
    if variant_exists(variant_id, settings):
        report(1.0, f"reused existing variant {variant_id}")
        return VariantResult(variant_id, read_manifest(variant_id, settings), reused=True)
    names = _module_names(model)
    device = loaded.device
    timings: dict[str, float] = {}
    started = time.perf_counter()

    hidden: list[torch.Tensor] = []
    calls: list[list[LayerCall]] = []
    if config.info.needs_calibration:
        report(0.0, f"building {config.nsamples} calibration windows from {config.calibration}")
        windows = calibration_windows(loaded.tokenizer, config.calibration, config.nsamples,
                                      seqlen, config.seed, max_length=loaded.max_length)
        timings["calibration"] = time.perf_counter() - started
        tick = time.perf_counter()
        batch_size = config.batch_size or _default_batch_size(seqlen, device)
        hidden_size = model.config.hidden_size
        nbytes = windows.numel() * hidden_size * torch.finfo(model.dtype).bits // 8
        store = _inputs_store(device, nbytes)
        batches = [chunk.to(device) for chunk in windows.split(batch_size)]
        with torch.no_grad():
            hidden, calls_per_batch = capture_decoder_inputs(model, layers, batches, store)
        # calls_per_batch[batch][layer] -> calls[layer][batch]
        calls = [list(per_layer) for per_layer in zip(*calls_per_batch, strict=True)]
        timings["capture"] = time.perf_counter() - tick

    masks: dict[str, torch.Tensor] = {}
    new_weights: dict[str, torch.Tensor] = {}
    per_linear: dict[str, float] = {}
    notes: dict[str, dict] = {}
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # param name -> (param, dense copy)
    pruned_count = total_count = 0

    def remember(param_name: str, param: torch.Tensor) -> None:
        originals.setdefault(param_name, (param, param.detach().to("cpu", copy=True)))

    try:
        for index, layer in enumerate(layers):
            prefix = names[id(layer)]
            report(index / len(layers), f"layer {index + 1}/{len(layers)}")
            linears = adapter.prunable_linears(layer)
            if not linears:
                raise UserError(f"layer {index} has no prunable linear layers")

            tick = time.perf_counter()
            if config.info.structured and config.info.needs_calibration:
                stats_for = {adapter.mlp_output: linears[adapter.mlp_output]}
                stats = collect_statistics(layer, stats_for, hidden, calls[index], device,
                                           hessian=False, covariance_of=frozenset(stats_for))
            elif config.info.needs_calibration:
                stats = collect_statistics(layer, linears, hidden, calls[index], device,
                                           hessian=config.info.needs_hessian)
            else:
                stats = {}
            timings["statistics"] = timings.get("statistics", 0.0) + time.perf_counter() - tick

            tick = time.perf_counter()
            changes: list[tuple[str, nn.Module, str, torch.Tensor]] = []  # (linear, module, param, mask)
            if config.info.structured:
                from backend.pruning.structured import neuron_changes

                changes, replacements = neuron_changes(layer, adapter, stats.get(adapter.mlp_output),
                                                       config, index)
                for name, param_name, value in replacements:  # compensation: new down weight/bias
                    module = layer.get_submodule(name)
                    param = getattr(module, param_name)
                    remember(f"{prefix}.{name}.{param_name}", param)
                    with torch.no_grad():
                        (weight_matrix(module) if param_name == "weight" else param).copy_(value)
                    new_weights[f"{prefix}.{name}.{param_name}"] = param.detach().to("cpu", copy=True)
            else:
                for group in input_groups(linears, stats):
                    for name in group:  # before any pruner sees it
                        remember(f"{prefix}.{name}.weight", linears[name].weight)
                    weights = [weight_matrix(linears[name]) for name in group]  # [out, in] views
                    outcomes = LINEAR_PRUNERS[config.method](weights, stats.get(group[0]), config)
                    for name, weight, outcome in zip(group, weights, outcomes, strict=True):
                        if outcome.new_weight is not None:
                            with torch.no_grad():
                                weight.copy_(outcome.new_weight)
                            new_weights[f"{prefix}.{name}.weight"] = linears[name].weight.detach()
                        if outcome.info:
                            notes[f"{prefix}.{name}"] = outcome.info
                        changes.append((name, linears[name], "weight", outcome.mask))
            stats = None  # free Hessians before the next layer
            for name, module, param_name, mask in changes:
                param = getattr(module, param_name)
                full_name = f"{prefix}.{name}.{param_name}"
                remember(full_name, param)  # before the first change to it
                if full_name in new_weights:  # updated weights, already zero where pruned
                    new_weights[full_name] = param.detach().to("cpu", copy=True)
                else:
                    with torch.no_grad():
                        (weight_matrix(module) if param_name == "weight" else param).masked_fill_(mask, 0)
                    stored = in_module_layout(module, mask) if param_name == "weight" else mask
                    masks[full_name] = stored.cpu()
                if param_name == "weight":
                    pruned = int(mask.count_nonzero())
                    per_linear[f"{prefix}.{name}"] = pruned / mask.numel()
                    pruned_count += pruned
                    total_count += mask.numel()
            timings["masks"] = timings.get("masks", 0.0) + time.perf_counter() - tick

            if config.info.needs_calibration and index + 1 < len(layers):
                tick = time.perf_counter()
                hidden = propagate(layer, hidden, calls[index], device)
                timings["propagate"] = timings.get("propagate", 0.0) + time.perf_counter() - tick

        report(1.0, "writing the variant")
        tick = time.perf_counter()
        timings["total_pruning"] = time.perf_counter() - started
        manifest = {
            "base_model": loaded.name,
            "method": config.method,
            "calibration": config.calibration if config.info.needs_calibration else "none",
            "calibration_identity": identity["calibration"],
            "sparsity": config.spec.label,
            "spec": asdict(config.spec),
            "nsamples": identity["nsamples"],
            "seqlen": identity["seqlen"],
            "requested_seqlen": config.seqlen,
            "seed": identity["seed"],
            "options": config.options(),
            "achieved_sparsity": {
                "overall": pruned_count / max(total_count, 1),
                "per_linear": per_linear,
            },
            "method_notes": notes,
            "device": str(device),
            "dtype": str(model.dtype).replace("torch.", ""),
            "versions": _versions(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_variant(variant_id, {**manifest, "timings": timings}, masks=masks, weights=new_weights,
                      settings=settings)
        timings["write"] = time.perf_counter() - tick
        manifest["timings"] = timings
    finally:
        with torch.no_grad():
            for param, dense in originals.values():
                param.copy_(dense.to(param.device))
    return VariantResult(variant_id, read_manifest(variant_id, settings), reused=False)


def _versions() -> dict:
    import transformers

    return {"prunelens": backend.__version__, "torch": torch.__version__,
            "transformers": transformers.__version__}
