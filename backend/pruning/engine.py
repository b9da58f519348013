"""The layer-sequential pruning engine: windows -> capture -> per layer: statistics, prune, propagate -> writer.

For each decoder layer in order: run the calibration windows through it gathering the input
statistics the method asks for (dense weights), call the registered method's
``prune(layer, options, spec)`` (``backend.pruning.registry``), apply what it returns, then run
the layer again so that the next layer sees the outputs of the *pruned* layer. Embeddings,
norms and lm_head are never touched. The dense weights are restored after the variant is
written, so one loaded model serves every variant.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import torch
from torch import nn

import backend
from backend.errors import UserError
from backend.models.adapters import in_module_layout, weight_matrix
from backend.pruning.config import PruneConfig, identity_slug, variant_identity
from backend.pruning.layers import LayerCall, capture_decoder_inputs, collect_statistics, propagate
from backend.pruning.registry import LayerToPrune, Pruned
from backend.pruning.spec import SparsitySpec, zero_where
from backend.pruning.variants import read_manifest, variant_exists, write_variant

__all__ = ["PruneConfig", "VariantResult", "capture_decoder_inputs", "collect_statistics",
           "create_variant", "propagate", "variant_id"]

Progress = Callable[[float, str], None]


@dataclass
class VariantResult:
    variant_id: str
    manifest: dict
    reused: bool


def _window_length(loaded, config: PruneConfig) -> int:
    return min(config.seqlen, loaded.max_length)


def variant_id(loaded, config: PruneConfig) -> str:
    """The id ``create_variant(loaded, config)`` writes; the only place that computes one.

    Also where a request that does not fit the model is refused (a depth method asked to drop as
    many blocks as the model has), so the API refuses it before starting a job."""
    if config.info.depth:
        from backend.pruning.depth import check_fits

        check_fits(loaded, config)
    return identity_slug(variant_identity(loaded.name, config, _window_length(loaded, config)), config.spec)


# ----------------------------------------------------------------------------- calibration inputs


@dataclass
class LayerInputs:
    hidden: list[torch.Tensor]  # per batch: [batch, tokens, hidden], the current layer's input
    calls: list[list[LayerCall]]  # [layer][batch]: the layer's other call arguments


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


def calibration_inputs(loaded, config: PruneConfig, report: Progress, timings: dict) -> LayerInputs:
    """Calibration windows -> the inputs of decoder layer 0 and every layer's call arguments."""
    from backend.data.windows import calibration_windows

    started = time.perf_counter()
    report(0.0, f"building {config.nsamples} calibration windows from {config.calibration}")
    seqlen = _window_length(loaded, config)
    windows = calibration_windows(loaded.tokenizer, config.calibration, config.nsamples, seqlen,
                                  config.seed, max_length=loaded.max_length)  # [nsamples, seqlen]
    timings["calibration"] = time.perf_counter() - started
    tick = time.perf_counter()
    model, device = loaded.model, loaded.device
    nbytes = windows.numel() * model.config.hidden_size * torch.finfo(model.dtype).bits // 8
    batches = [chunk.to(device) for chunk in windows.split(config.batch_size or _default_batch_size(seqlen, device))]
    with torch.no_grad():
        hidden, calls_per_batch = capture_decoder_inputs(
            model, loaded.adapter.decoder_layers(model), batches, _inputs_store(device, nbytes))
    timings["capture"] = time.perf_counter() - tick
    return LayerInputs(hidden, [list(per_layer) for per_layer in zip(*calls_per_batch, strict=True)])


# ----------------------------------------------------------------------------- applying changes


@dataclass
class AppliedChanges:
    """What the methods changed: applied to the model, kept for the writer, undone by ``restore``."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # param -> bool, module layout, CPU
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # param -> updated tensor, CPU
    per_linear: dict[str, float] = field(default_factory=dict)  # linear -> fraction of weights zeroed
    notes: dict[str, dict] = field(default_factory=dict)
    pruned: int = 0
    total: int = 0
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # (param, dense copy)

    @torch.no_grad()
    def apply(self, prefix: str, linears: dict[str, nn.Module], changes: list[Pruned]) -> None:
        for change in changes:
            module = linears[change.linear]
            param = getattr(module, change.param)
            name = f"{prefix}.{change.linear}.{change.param}"
            if name not in self.originals:  # the dense tensor, before the first change to it
                self.originals[name] = (param, param.detach().to("cpu", copy=True))
            target = weight_matrix(module) if change.param == "weight" else param.data  # [out, in] | [out]
            if change.new_value is not None:
                # The value is the engine's now: zeroed where pruned in place, written once into the
                # model and kept (in the parameter's layout and dtype) for the writer, no third copy.
                value = zero_where(change.new_value, change.mask)  # [out, in] | [out]
                target.copy_(value)
                stored = in_module_layout(module, value) if change.param == "weight" else value
                self.values[name] = stored.to("cpu", param.dtype).contiguous()
            else:
                zero_where(target, change.mask)
                stored = in_module_layout(module, change.mask) if change.param == "weight" else change.mask
                self.masks[name] = stored.cpu()
            if change.info:
                self.notes[f"{prefix}.{change.linear}"] = change.info
            if change.param == "weight":
                pruned = int(change.mask.count_nonzero())
                self.per_linear[f"{prefix}.{change.linear}"] = pruned / change.mask.numel()
                self.pruned += pruned
                self.total += change.mask.numel()

    @torch.no_grad()
    def restore(self) -> None:
        for param, dense in self.originals.values():
            param.copy_(dense.to(param.device))


# ----------------------------------------------------------------------------- the pipeline


def _prunable_layers(loaded) -> nn.ModuleList:
    layers = loaded.adapter.decoder_layers(loaded.model)
    if len(layers) == 0 or not any(loaded.adapter.prunable_linears(layer) for layer in layers):
        raise UserError(f"{loaded.name} has no prunable layers (no decoder layers with linear modules)")
    return layers


def prune_layer(loaded, index: int, layer: nn.Module, config: PruneConfig, inputs: LayerInputs | None,
                timings: dict, spec: SparsitySpec | None = None) -> tuple[dict[str, nn.Module], list[Pruned]]:
    """Statistics of one layer's inputs, then the method's changes to its linears (not applied).

    ``spec``: this layer's own sparsity (a profile such as OWL); default the config's."""
    method, adapter = config.info, loaded.adapter
    spec = spec or config.spec
    linears = adapter.prunable_linears(layer)
    if not linears:
        raise UserError(f"layer {index} has no prunable linear layers")
    tick = time.perf_counter()
    statistics = {}
    needs = method.input_needs(config.method_options)
    if needs is not None:
        assert inputs is not None, "calibration inputs are captured for every method that needs them"
        wanted = linears if needs.linears == "all" else {adapter.mlp_output: linears[adapter.mlp_output]}
        statistics = collect_statistics(
            layer, wanted, inputs.hidden, inputs.calls[index], loaded.device, hessian=needs.hessian,
            covariance_of=frozenset(wanted) if needs.covariance else frozenset(),
            skip_leading=needs.skip_leading, folds=needs.folds, mean=needs.mean)
    timings["statistics"] = timings.get("statistics", 0.0) + time.perf_counter() - tick
    tick = time.perf_counter()
    guard = None if config.protection is None else config.protection.layer_guards(
        index, linears, adapter.mlp_inputs, adapter.mlp_output, lambda name: weight_matrix(linears[name]))
    to_prune = LayerToPrune(index, linears, statistics, adapter, guard)
    options = config.method_options
    changes = method.prune(to_prune, options, spec)
    if getattr(options, "refine", "none") == "dsnot":
        from backend.pruning.dsnot import refine_changes

        changes = refine_changes(to_prune, changes, options, spec)
    if guard is not None:
        for change in changes:
            if change.param == "weight" and change.linear in guard:
                protected = guard[change.linear].protected
                change.info = {**change.info, "protected_weights": int(protected.count_nonzero()),
                               "protected_weights_pruned": int((change.mask & protected).count_nonzero())}
    timings["masks"] = timings.get("masks", 0.0) + time.perf_counter() - tick
    return linears, changes


def create_variant(loaded, config: PruneConfig, *, progress: Progress | None = None,
                   settings=None) -> VariantResult:
    """Prune ``loaded`` with ``config``, write the variant, restore the dense weights.

    An existing variant with the same configuration (and code version) is reused, not
    recomputed. ``settings``: whose cache holds the variants (default: the environment's).
    """
    config.validate()
    report = progress or (lambda _fraction, _message: None)
    layers = _prunable_layers(loaded)
    if config.protection is not None:
        config.protection.check_fits(len(layers), loaded.adapter.neuron_count(loaded.model))
    target = variant_id(loaded, config)
    if variant_exists(target, settings):
        report(1.0, f"reused existing variant {target}")
        return VariantResult(target, read_manifest(target, settings), reused=True)
    if config.info.depth:
        from backend.pruning.depth import create_depth_variant

        manifest = create_depth_variant(loaded, config, target, calibration_inputs, _manifest, report, settings)
        return VariantResult(target, manifest, reused=False)
    names = {id(module): name for name, module in loaded.model.named_modules()}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    applied = AppliedChanges()
    try:
        inputs = calibration_inputs(loaded, config, report, timings) if config.uses_calibration else None
        layer_specs: list[SparsitySpec | None] = [None] * len(layers)
        extra: dict = {}
        if getattr(config.method_options, "sparsity_profile", "uniform") == "owl":
            from backend.pruning.owl import owl_profile
            from backend.pruning.profile_options import WeightProfileOptions

            options = config.method_options
            assert inputs is not None, "OWL reads calibration data (config.uses_calibration)"
            assert isinstance(options, WeightProfileOptions), "the registry joins the profile to weight methods"
            report(0.0, "OWL: outlier ratios of the dense layers")
            tick = time.perf_counter()
            profile = owl_profile(loaded, layers, inputs.hidden, inputs.calls, options, config.spec)
            timings["owl_profile"] = time.perf_counter() - tick
            layer_specs, extra["owl"] = list(profile.specs()), profile.record()
        for index, layer in enumerate(layers):
            report(index / len(layers), f"layer {index + 1}/{len(layers)}")
            linears, changes = prune_layer(loaded, index, layer, config, inputs, timings, layer_specs[index])
            applied.apply(names[id(layer)], linears, changes)
            del changes  # free Hessians and updated weights before the next layer
            if inputs is not None and index + 1 < len(layers):
                tick = time.perf_counter()
                inputs.hidden = propagate(layer, inputs.hidden, inputs.calls[index], loaded.device)
                timings["propagate"] = timings.get("propagate", 0.0) + time.perf_counter() - tick
        timings["total_pruning"] = time.perf_counter() - started
        report(1.0, "writing the variant")
        write_variant(target, {**_manifest(loaded, config, applied, timings), **extra}, masks=applied.masks,
                      weights=applied.values, settings=settings)
    finally:
        applied.restore()
    return VariantResult(target, read_manifest(target, settings), reused=False)


def _manifest(loaded, config: PruneConfig, applied: AppliedChanges, timings: dict) -> dict:
    import transformers

    identity = variant_identity(loaded.name, config, _window_length(loaded, config))
    return {
        "base_model": loaded.name,
        "method": config.method,
        "code_version": identity["code_version"],
        "calibration": config.calibration if config.uses_calibration else "none",
        "calibration_identity": identity["calibration"],
        "sparsity": config.spec.label,
        "spec": asdict(config.spec),
        "nsamples": identity["nsamples"],
        "seqlen": identity["seqlen"],
        "requested_seqlen": config.seqlen,
        "seed": identity["seed"],
        "options": identity["options"],
        "protection": None if config.protection is None else _protection_record(config, applied),
        "achieved_sparsity": {"overall": applied.pruned / max(applied.total, 1),
                              "per_linear": applied.per_linear},
        "method_notes": applied.notes,
        "device": str(loaded.device),
        "dtype": str(loaded.model.dtype).replace("torch.", ""),
        "versions": {"prunelens": backend.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings": timings,
    }


def _protection_record(config: PruneConfig, applied: AppliedChanges) -> dict:
    """What was protected, by which source and how, and how many protected weights stayed."""
    assert config.protection is not None
    notes = [note for note in applied.notes.values() if "protected_weights" in note]
    return {**config.protection.describe(),
            "protected_weights": sum(note["protected_weights"] for note in notes),
            "protected_weights_pruned": sum(note["protected_weights_pruned"] for note in notes)}
