"""What a variant buys: forward latency, throughput, memory and stored parameters vs its dense model.

Measured, never assumed. The dense model and the variant run the same seeded batch, interleaved
repeat by repeat (the order alternates, so load from other processes and cache warmth hit both
alike), and the figure users read is the **median of the per-repeat ratios**
dense_seconds / variant_seconds (``speedup``; > 1 means the variant is faster), with its range.

How the variant is run decides what it can buy, so each kind runs in the form a runtime would:
- unstructured and N:M: the pruned weights are zeros in dense tensors (dense kernels multiply
  them like any number: no speed-up expected); on CUDA with fp16/bf16, a 2:4 variant is also run
  with PyTorch's semi-structured sparse kernels (``to_sparse_semi_structured``), the one path that
  can turn 2:4 into speed;
- structured (whole MLP neurons): the variant is shrunk into a smaller model
  (``backend.pruning.shrink.shrunk_model``), which is what its export holds;
- depth (whole decoder blocks): the variant already has fewer layers.

Results are stored as JSON under ``<cache_dir>/speed/`` keyed by variant, device, dtype, batch
and sequence length, with the version of this module's code.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from backend.errors import NotFoundError, UserError
from backend.source_digest import files_digest
from backend.storage import write_json_atomic

if TYPE_CHECKING:
    from backend.config import Settings
    from backend.models.loader import LoadedModel

Progress = Callable[[float, str], None]

MAX_TOKENS = 65_536  # batch x seqlen of one timed forward; more is a mistake, not a benchmark


@dataclass(frozen=True)
class SpeedSettings:
    """One speed measurement: the batch shape and how many interleaved repeats."""

    batch: int = 1
    seqlen: int = 128
    repeats: int = 9
    warmup: int = 2
    seed: int = 0

    def check(self, max_length: int | None = None) -> SpeedSettings:
        for name in ("batch", "seqlen", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"--{name} must be a positive integer, got {value!r}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup!r}")
        if self.batch * self.seqlen > MAX_TOKENS:
            raise UserError(f"batch x seqlen = {self.batch * self.seqlen} tokens; at most {MAX_TOKENS} per forward")
        if max_length is not None and self.seqlen > max_length:
            raise UserError(f"--seqlen {self.seqlen} is longer than the model's context ({max_length})")
        return self


@cache
def speed_code_version() -> str:
    """12 hex digits of the SHA-256 of this module's source and of the depth module that removes a depth
    variant's blocks before timing: a stored figure from other code is stale."""
    here = Path(__file__).resolve()
    backend_root = here.parents[1]
    return files_digest([here, backend_root / "pruning" / "depth.py"], backend_root)[:12]


def sparsity_kind(manifest: dict) -> str:
    """'unstructured', 'nm', 'neurons' or 'blocks' (a depth-pruned variant)."""
    if manifest.get("dropped_blocks") is not None:
        return "blocks"
    return str(manifest.get("spec", {}).get("kind", "unstructured"))


def expectation(kind: str, device: torch.device, manifest: dict | None = None) -> str:
    """What this kind of sparsity can buy on this device, said plainly next to the measurement."""
    if kind == "neurons":
        return "structured: the MLPs are smaller (measured shrunk), so it can be faster on every device"
    if kind == "blocks":
        layers = (manifest or {}).get("layers") or {}
        dense, kept = layers.get("dense"), layers.get("kept")
        ratio = f" (at most about {dense / kept:.2f}x, layers {dense} -> {kept})" if dense and kept else ""
        return f"depth: fewer decoder blocks run, so it can be faster on every device{ratio}"
    if kind == "nm" and device.type == "cuda":
        return ("2:4 semi-structured: no speed-up with dense kernels; PyTorch's sparse kernels "
                "(measured separately where they run) can give one on recent GPUs")
    if kind == "nm":
        return "N:M semi-structured: no speed-up on CPU (no sparse kernels here; the zeros are multiplied)"
    return "unstructured: no speed-up with dense kernels on any device (the zeros are multiplied)"


def _stored_parameters(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"parameters": total, "nonzero_parameters": nonzero, "parameter_bytes": size}


def variant_model(loaded: LoadedModel, variant_id: str, manifest: dict,
                  settings: Settings | None = None) -> nn.Module:
    """A copy of the dense model turned into the variant, in the form it would be deployed."""
    from backend.pruning.variants import apply_overlay

    model = copy.deepcopy(loaded.model)
    apply_overlay(model, variant_id, settings)
    kind = sparsity_kind(manifest)
    if kind == "neurons":
        from backend.pruning.shrink import shrunk_model

        model, _ = shrunk_model(model, loaded.adapter)
    elif kind == "blocks":
        from backend.pruning.depth import remove_blocks

        remove_blocks(model, loaded.adapter, manifest["dropped_blocks"])
    return model.eval()


def semi_structured_model(model: nn.Module, adapter) -> tuple[nn.Module | None, str | None]:
    """The 2:4 variant with PyTorch's semi-structured sparse weights, or (None, why not)."""
    if next(model.parameters()).device.type != "cuda":
        return None, "semi-structured sparse kernels need CUDA"
    try:
        from torch.sparse import to_sparse_semi_structured

        sparse = copy.deepcopy(model)
        for layer in adapter.decoder_layers(sparse):
            for module in adapter.prunable_linears(layer).values():
                if isinstance(module, nn.Linear):
                    module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()),
                                                 requires_grad=False)
        return sparse.eval(), None
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:  # unsupported GPU, dtype or shape
        return None, f"semi-structured sparse kernels unavailable: {type(exc).__name__}: {exc}"[:300]


def _forward_seconds(model: nn.Module, input_ids: torch.Tensor) -> float:
    synchronize = torch.cuda.synchronize if input_ids.device.type == "cuda" else (lambda: None)
    synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=input_ids, use_cache=False)
    synchronize()
    return time.perf_counter() - start


def _peak_bytes(model: nn.Module, input_ids: torch.Tensor) -> int | None:
    """Peak CUDA memory of one forward (weights included); None on CPU, where no allocator
    statistic isolates one model from the rest of the process."""
    if input_ids.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(input_ids.device)
    _forward_seconds(model, input_ids)
    return int(torch.cuda.max_memory_allocated(input_ids.device))


def time_interleaved(models: dict[str, nn.Module], input_ids: torch.Tensor, repeats: int, warmup: int,
                     progress: Progress | None = None) -> dict[str, list[float]]:
    """Seconds per forward of each model, repeat by repeat, in alternating order."""
    names = list(models)
    for _ in range(warmup):
        for name in names:
            _forward_seconds(models[name], input_ids)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name in order:
            seconds[name].append(_forward_seconds(models[name], input_ids))
        if progress:
            progress((repeat + 1) / repeats, f"repeat {repeat + 1}/{repeats}")
    return seconds


def _ratio_summary(dense: list[float], other: list[float]) -> dict:
    ratios = [d / o for d, o in zip(dense, other, strict=True)]
    return {"speedup": statistics.median(ratios), "speedup_range": [min(ratios), max(ratios)]}


def measure_speed(loaded: LoadedModel, variant_id: str, speed: SpeedSettings = SpeedSettings(), *,
                  settings: Settings | None = None, progress: Progress | None = None) -> dict:
    """Measure the variant against its dense model (``loaded``, unchanged) and store the result."""
    from backend.pruning.variants import read_manifest, validate_variant_id

    validate_variant_id(variant_id)
    manifest = read_manifest(variant_id, settings)
    if manifest.get("base_model") != loaded.name:
        raise UserError(f"variant {variant_id!r} was pruned from {manifest.get('base_model')!r}, "
                        f"not {loaded.name!r}")
    speed.check(loaded.max_length)
    kind = sparsity_kind(manifest)
    device = loaded.device
    models: dict[str, nn.Module] = {"dense": loaded.model, "variant": variant_model(loaded, variant_id, manifest,
                                                                                    settings)}
    notes: list[str] = []
    if kind == "nm" and (manifest.get("spec") or {}).get("n") == 2 and (manifest.get("spec") or {}).get("m") == 4:
        sparse, why_not = semi_structured_model(models["variant"], loaded.adapter)
        if sparse is not None:
            models["variant_sparse_kernels"] = sparse
        elif why_not:
            notes.append(why_not)
    generator = torch.Generator().manual_seed(speed.seed)
    vocab = int(loaded.model.config.vocab_size)
    input_ids = torch.randint(0, vocab, (speed.batch, speed.seqlen), generator=generator).to(device)
    seconds = time_interleaved(models, input_ids, speed.repeats, speed.warmup, progress)
    tokens = speed.batch * speed.seqlen
    measured = {}
    for name, model in models.items():
        median = statistics.median(seconds[name])
        measured[name] = {
            "seconds_median": median,
            "seconds": seconds[name],
            "tokens_per_second": tokens / median,
            "peak_memory_bytes": _peak_bytes(model, input_ids),
            **_stored_parameters(model),
        }
        if name != "dense":
            measured[name].update(_ratio_summary(seconds["dense"], seconds[name]))
    if device.type != "cuda":
        notes.append("peak memory is measured on CUDA only; on CPU compare parameter_bytes")
    result = {
        "variant_id": variant_id,
        "base_model": loaded.name,
        "method": manifest.get("method"),
        "sparsity": manifest.get("sparsity"),
        "kind": kind,
        "device": str(device),
        "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch": speed.batch,
        "seqlen": speed.seqlen,
        "repeats": speed.repeats,
        "speedup": measured["variant"]["speedup"],
        "expectation": expectation(kind, device, manifest),
        "models": measured,
        "notes": notes,
        "code_version": speed_code_version(),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    store_speed(result, settings)
    return result


def speed_dir(settings: Settings | None = None) -> Path:
    from backend.config import get_settings

    return (settings or get_settings()).cache_dir / "speed"


def _file_name(result: dict) -> str:
    device = result["device"].replace(":", "")
    return f"{result['variant_id']}-{device}-{result['dtype']}-b{result['batch']}-t{result['seqlen']}.json"


def store_speed(result: dict, settings: Settings | None = None) -> Path:
    folder = speed_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / _file_name(result)
    write_json_atomic(path, result)
    return path


def stored_speeds(variant_id: str | None = None, settings: Settings | None = None) -> list[dict]:
    """Every stored measurement (of one variant), newest first; other code's are marked stale."""
    folder = speed_dir(settings)
    if not folder.is_dir():
        return []
    rows = []
    for path in folder.glob("*.json"):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # another process is replacing it; the next read sees the whole file
        if variant_id is not None and row.get("variant_id") != variant_id:
            continue
        row["stale"] = row.get("code_version") != speed_code_version()
        rows.append(row)
    return sorted(rows, key=lambda row: row.get("created_at", ""), reverse=True)


def latest_speed(variant_id: str, settings: Settings | None = None) -> dict:
    rows = [row for row in stored_speeds(variant_id, settings) if not row["stale"]]
    if not rows:
        raise NotFoundError(f"no speed measured for variant {variant_id!r}; run `prunelens speed {variant_id}`")
    return rows[0]
