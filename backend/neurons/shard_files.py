"""Shard files of a sharded index build: one ``IndexState`` as one safetensors file, written atomically.

The tensors are the file's tensors; everything else (documents, token count, timings, which node
built it) is JSON in the safetensors header's metadata, so a shard is a single file, renamed into
place when complete: a reader sees a whole shard or none. No pickles: loading a shard runs no code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from backend.neurons.accumulators import HALVES, SIDES, IndexState, KLState, LayerStats
from backend.neurons.topk import TopK

SHARD_FORMAT = 1
_STATS_FIELDS = ("sum", "sum_sq", "sum_abs", "max", "min", "histogram", "profile")


def shard_name(documents: range) -> str:
    """The file of the shard holding corpus documents ``documents`` (start inclusive, stop exclusive)."""
    return f"shard-{documents.start:08d}-{documents.stop:08d}.safetensors"


def _top_tensors(prefix: str, top: TopK, out: dict[str, torch.Tensor]) -> None:
    out[f"{prefix}/scores"] = top.scores
    out[f"{prefix}/keys"] = top.keys
    for name, values in top.payload.items():
        out[f"{prefix}/payload/{name}"] = values


def _top_from(prefix: str, tensors: dict[str, torch.Tensor]) -> TopK:
    payload_prefix = f"{prefix}/payload/"
    payload = {name[len(payload_prefix):]: values
               for name, values in tensors.items() if name.startswith(payload_prefix)}
    return TopK(tensors[f"{prefix}/scores"], tensors[f"{prefix}/keys"], payload)


def state_tensors(state: IndexState) -> dict[str, torch.Tensor]:
    """Every tensor of ``state`` by a path-like name, on the CPU and contiguous (safetensors' needs)."""
    out: dict[str, torch.Tensor] = {"profile_counts": state.profile_counts}
    for model, layers in state.layers.items():
        for layer, stats in enumerate(layers):
            for name in _STATS_FIELDS:
                out[f"layers/{model}/{layer}/{name}"] = getattr(stats, name)
            for (half, side), top in stats.top.items():
                _top_tensors(f"layers/{model}/{layer}/top/{half}/{side}", top, out)
    for variant, sums in state.cross.items():
        for layer, values in enumerate(sums):
            out[f"cross/{variant}/{layer}"] = values
    for variant, kl in state.kl.items():
        out[f"kl/{variant}/sum"], out[f"kl/{variant}/token_sum"] = kl.sum, kl.token_sum
        out[f"kl/{variant}/token_count"] = kl.token_count
        _top_tensors(f"kl/{variant}/top", kl.top, out)
    for variant, per_layer in state.weights_removed.items():
        for layer, values in enumerate(per_layer):
            out[f"weights_removed/{variant}/{layer}"] = values
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in out.items()}


def state_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> IndexState:
    """The inverse of ``state_tensors`` (``meta``: the JSON part of the shard)."""
    layers_count = meta["layers"]
    layers = {}
    for model in meta["models"]:
        layers[model] = [
            LayerStats(**{name: tensors[f"layers/{model}/{layer}/{name}"] for name in _STATS_FIELDS},
                       top={(half, side): _top_from(f"layers/{model}/{layer}/top/{half}/{side}", tensors)
                            for half in HALVES for side in SIDES})
            for layer in range(layers_count)]
    variants = [model for model in meta["models"] if model != meta["dense"]]
    return IndexState(
        documents=set(meta["documents"]), tokens=meta["tokens"], profile_counts=tensors["profile_counts"],
        layers=layers,
        cross={v: [tensors[f"cross/{v}/{layer}"] for layer in range(layers_count)] for v in variants},
        kl={v: KLState(tensors[f"kl/{v}/sum"], tensors[f"kl/{v}/token_sum"], tensors[f"kl/{v}/token_count"],
                       _top_from(f"kl/{v}/top", tensors)) for v in variants},
        weights_removed={v: [tensors[f"weights_removed/{v}/{layer}"] for layer in range(layers_count)]
                         for v in meta["weights_removed"]},
        timings=dict(meta["timings"]),
    )


def write_shard(path: Path, state: IndexState, *, dense: str, layers: int, extra: dict) -> None:
    """Write ``state`` to ``path`` atomically (beside it, then renamed). ``extra``: more JSON facts
    (which node, which attempt). A file already there is left as it is: the same shard, done once."""
    if path.exists():
        return
    meta = {"format": SHARD_FORMAT, "dense": dense, "models": list(state.layers), "layers": layers,
            "documents": sorted(state.documents), "tokens": state.tokens,
            "weights_removed": list(state.weights_removed), "timings": state.timings, **extra}
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state_tensors(state), str(staging), metadata={"shard": json.dumps(meta)})
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)


def read_shard_meta(path: Path) -> dict:
    """The JSON part of a shard file (reads the header only)."""
    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["shard"])


def read_shard(path: Path) -> tuple[IndexState, dict]:
    """A shard file's state (tensors on the CPU) and its JSON part."""
    meta = read_shard_meta(path)
    return state_from_tensors(load_file(str(path)), meta), meta
