"""Write a finished state as an index folder: manifest.json and Parquet tables, atomically.

The per-neuron tables (neurons, examples, agreement) are sorted by (layer, neuron) and cut into
row groups on neuron boundaries: row group r of a table holds exactly the neurons of block
``(layer · N + neuron) // neurons_per_group == r`` (blocks without any row are not written and are
listed as ``skipped``). The manifest's ``row_groups`` records that layout per table, so a neuron
page reads one row group of each table (``backend.neurons.page_reader``) instead of scanning.

Tables:
* neurons.parquet — per (model, layer, neuron): count, mean, mean_abs, std, max, min, density,
  histogram (counts on HISTOGRAM_LOWER_EDGES);
* examples.parquet — per kept example: model, side (positive / negative; reread_positive /
  reread_negative for a variant's activations on the dense examples), rank, document, position,
  activation, token_id, window (2·context+1 activations centred on the example, NaN outside the
  document or on the start token);
* agreement.parquet — per (variant, layer, neuron): the columns of ``agreement.layer_agreement``;
* documents.parquet (token ids per document), vocab.parquet (token id -> text),
  kl_top.parquet and kl_tokens.parquet (per variant: most divergent positions, mean KL per token).
"""

from __future__ import annotations

import importlib.metadata
import json
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from backend.config import Settings
from backend.neurons.accumulators import SIDES, IndexState
from backend.neurons.agreement import TokenLookup, layer_agreement, overall_top
from backend.neurons.build import DENSE, IndexInputs
from backend.neurons.corpus import KEY_EMPTY, POSITION_BITS
from backend.neurons.request import DENSITY_FIRST_BIN, DENSITY_THRESHOLD, HISTOGRAM_LOWER_EDGES
from backend.neurons.store import MANIFEST, code_version, index_dir
from backend.storage import atomic_directory

# Neurons per row group of each per-neuron table: a neuron page decodes one group of each, so
# groups are small (examples: 8 neurons x 2k x (1 + 2 variants) rows), while DuckDB scans (token
# search) still see a footer of a few MB. Measured on the embedded model: decoding one examples
# group costs ~2 ms at 8 or 16 neurons, ~5 ms at 64.
NEURONS_PER_ROW_GROUP = {"neurons": 32, "examples": 8, "agreement": 32}
# The per-neuron tables are LZ4-compressed: a page decodes three small groups, and zstd sets up a
# context per column chunk. Measured on the embedded model's index (2000 tokens, dense + 1 variant,
# 300 groups each): decoding a page's three groups 1.09 ms with zstd, 0.52 ms with LZ4, for files
# 1.16x (examples), 1.47x (neurons) and 1.01x (agreement) the zstd size.
PER_NEURON_COMPRESSION = "lz4"


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _write(table: pa.Table, path, rows_per_group: int) -> None:
    pq.write_table(table, path, row_group_size=max(1, rows_per_group), compression="zstd")


def _write_by_neuron(table: pa.Table, path, neurons: int, per_group: int) -> dict:
    """Write ``table`` (sorted by layer, neuron) with one row group per block of ``per_group``
    neurons; returns the layout ``{"neurons_per_group", "skipped"}`` the page reader needs."""
    block = (table.column("layer").to_numpy().astype(np.int64) * neurons
             + table.column("neuron").to_numpy()) // per_group  # [rows], non-decreasing
    blocks = int(block[-1]) + 1 if len(block) else 0
    bounds = np.searchsorted(block, np.arange(blocks + 1), side="left")  # [blocks + 1] first row of each
    skipped = [number for number in range(blocks) if bounds[number] == bounds[number + 1]]
    # only the columns a reader locates rows by carry statistics (they keep the footer small);
    # dictionaries only for the text columns: on floats they cost a third of the file and slow decoding
    texts = [field.name for field in table.schema
             if pa.types.is_string(field.type) or pa.types.is_dictionary(field.type)]
    with pq.ParquetWriter(path, table.schema, compression=PER_NEURON_COMPRESSION, write_statistics=["layer", "neuron"],
                          use_dictionary=texts) as writer:
        for number in range(blocks):
            start, stop = int(bounds[number]), int(bounds[number + 1])
            if stop > start:
                writer.write_table(table.slice(start, stop - start), row_group_size=stop - start)
    return {"neurons_per_group": per_group, "skipped": skipped}


def _neuron_rows(state: IndexState, inputs: IndexInputs, models: list[str]) -> pa.Table:
    columns: dict[str, list] = {name: [] for name in (
        "model", "layer", "neuron", "count", "mean", "mean_abs", "std", "max", "min", "density", "histogram")}
    count = state.tokens
    for layer in range(inputs.layers):
        for model in models:
            stats = state.layers[model][layer]
            mean = _np(stats.sum) / count
            histogram = _np(stats.histogram)
            columns["model"] += [model] * inputs.neurons
            columns["layer"].append(np.full(inputs.neurons, layer, dtype=np.int32))
            columns["neuron"].append(np.arange(inputs.neurons, dtype=np.int32))
            columns["count"].append(np.full(inputs.neurons, count, dtype=np.int64))
            columns["mean"].append(mean)
            columns["mean_abs"].append(_np(stats.sum_abs) / count)
            columns["std"].append(np.sqrt(np.maximum(_np(stats.sum_sq) / count - mean * mean, 0.0)))
            columns["max"].append(_np(stats.max).astype(np.float64))
            columns["min"].append(_np(stats.min).astype(np.float64))
            columns["density"].append(histogram[:, DENSITY_FIRST_BIN:].sum(1) / count)
            columns["histogram"].append(histogram)
    histograms = np.concatenate(columns.pop("histogram"))
    arrays = {name: pa.array(values) if name == "model" else pa.array(np.concatenate(values))
              for name, values in columns.items()}
    arrays["histogram"] = pa.FixedSizeListArray.from_arrays(pa.array(histograms.reshape(-1)), histograms.shape[1])
    return _sorted(pa.table(arrays))


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([("layer", "ascending"), ("neuron", "ascending")])


EXAMPLE_SIDES = ("positive", "negative", "reread_positive", "reread_negative")


def _example_block(model: int, side: int, top_keys: np.ndarray, scores: np.ndarray, windows: np.ndarray,
                   sign: int, lookup: TokenLookup) -> dict[str, np.ndarray]:
    """Rows of one (model, side) block of a layer: keys/scores [N, k], windows [N, k, W]."""
    neuron, rank = np.nonzero(top_keys != KEY_EMPTY)
    keys = top_keys[neuron, rank]
    reread = EXAMPLE_SIDES[side].startswith("reread")
    activation = windows[neuron, rank, windows.shape[2] // 2] if reread else sign * scores[neuron, rank]
    return {
        "model": np.full(len(keys), model, dtype=np.int8), "side": np.full(len(keys), side, dtype=np.int8),
        "neuron": neuron.astype(np.int32), "rank": rank.astype(np.int16),
        "document": (keys >> POSITION_BITS).astype(np.int32),
        "position": (keys & ((1 << POSITION_BITS) - 1)).astype(np.int32),
        "activation": activation.astype(np.float32), "token_id": lookup(keys).astype(np.int32),
        # float16: the window is for display (colour scale); the example's own activation is float32
        "window": windows[neuron, rank].astype(np.float16),
    }


def _example_rows(state: IndexState, inputs: IndexInputs, variants: list[str], lookup: TokenLookup) -> pa.Table:
    models = [DENSE, *variants]
    layers = []
    for layer in range(inputs.layers):
        blocks = []
        for side, sign in zip(SIDES, (1, -1), strict=True):
            code = EXAMPLE_SIDES.index(side)
            dense_top = overall_top(state.layers[DENSE][layer], side)
            keys, scores = _np(dense_top.keys), _np(dense_top.scores)
            blocks.append(_example_block(0, code, keys, scores, _np(dense_top.payload["window"]), sign, lookup))
            for number, variant in enumerate(variants, start=1):
                reread = _np(dense_top.payload[f"reread:{variant}"])
                blocks.append(_example_block(number, code + 2, keys, scores, reread, sign, lookup))
                top = overall_top(state.layers[variant][layer], side)
                blocks.append(_example_block(number, code, _np(top.keys), _np(top.scores),
                                             _np(top.payload["window"]), sign, lookup))
        merged = {name: np.concatenate([block[name] for block in blocks]) for name in blocks[0]}
        order = np.argsort(merged["neuron"], kind="stable")  # rows sorted by neuron within the layer
        layers.append({name: values[order] for name, values in merged.items()}
                      | {"layer": np.full(len(order), layer, dtype=np.int32)})
    columns = {name: np.concatenate([part[name] for part in layers]) for name in layers[0]}
    width = 2 * inputs.request.context + 1
    arrays = {
        "model": pa.DictionaryArray.from_arrays(pa.array(columns.pop("model")), pa.array(models)),
        "side": pa.DictionaryArray.from_arrays(pa.array(columns.pop("side")), pa.array(list(EXAMPLE_SIDES))),
        "window": pa.FixedSizeListArray.from_arrays(pa.array(columns.pop("window").reshape(-1)), width),
    }
    arrays |= {name: pa.array(values) for name, values in columns.items()}
    return pa.table({name: arrays[name] for name in ("model", "side", "layer", "neuron", "rank", "document",
                                                     "position", "activation", "token_id", "window")})


def _agreement_rows(state: IndexState, inputs: IndexInputs, variants: list[str], lookup: TokenLookup) -> pa.Table:
    blocks = []
    for variant in variants:
        for layer in range(inputs.layers):
            columns = layer_agreement(state, variant, layer, lookup, DENSE)
            removed = _np(state.weights_removed[variant][layer])
            columns |= {"weights_removed_fraction": removed[0], "weights_removed_inputs": removed[1],
                        "weights_removed_output": removed[2]}
            blocks.append({"variant": [variant] * inputs.neurons,
                           "layer": np.full(inputs.neurons, layer, dtype=np.int32),
                           "neuron": np.arange(inputs.neurons, dtype=np.int32), **columns})
    if not blocks:
        return pa.table({"variant": pa.array([], pa.string()), "layer": pa.array([], pa.int32()),
                         "neuron": pa.array([], pa.int32())})
    arrays = {name: pa.array([v for block in blocks for v in block[name]]) if name == "variant"
              else pa.array(np.concatenate([block[name] for block in blocks])) for name in blocks[0]}
    return _sorted(pa.table(arrays))


def _kl_tables(state: IndexState, variants: list[str]) -> tuple[pa.Table, pa.Table, dict]:
    top_rows: dict[str, list] = {"variant": [], "rank": [], "document": [], "position": [], "kl": []}
    token_rows: dict[str, list] = {"variant": [], "token_id": [], "mean_kl": [], "count": []}
    means = {}
    for variant in variants:
        kl = state.kl[variant]
        keys, scores = _np(kl.top.keys[0]), _np(kl.top.scores[0])
        filled = keys != KEY_EMPTY
        top_rows["variant"] += [variant] * int(filled.sum())
        top_rows["rank"] += list(range(int(filled.sum())))
        top_rows["document"] += (keys[filled] >> POSITION_BITS).tolist()
        top_rows["position"] += (keys[filled] & ((1 << POSITION_BITS) - 1)).tolist()
        top_rows["kl"] += scores[filled].tolist()
        counts, sums = _np(kl.token_count), _np(kl.token_sum)
        seen = np.nonzero(counts)[0]
        token_rows["variant"] += [variant] * len(seen)
        token_rows["token_id"] += seen.tolist()
        token_rows["mean_kl"] += (sums[seen] / counts[seen]).tolist()
        token_rows["count"] += counts[seen].tolist()
        means[variant] = float(_np(kl.sum)) / state.tokens
    return pa.table(top_rows), pa.table(token_rows), means


def _vocab_table(tokenizer, vocab: int) -> pa.Table:
    texts = tokenizer.batch_decode([[token] for token in range(vocab)], clean_up_tokenization_spaces=False)
    return pa.table({"token_id": pa.array(np.arange(vocab, dtype=np.int32)), "token": pa.array(texts)})


def _documents_table(documents: list[list[int]]) -> pa.Table:
    lengths = np.array([len(ids) for ids in documents], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    flat = pa.array(np.fromiter((t for ids in documents for t in ids), dtype=np.int32, count=int(lengths.sum())))
    return pa.table({"document": pa.array(np.arange(len(documents), dtype=np.int32)),
                     "token_ids": pa.ListArray.from_arrays(pa.array(offsets), flat)})


def _versions() -> dict:
    names = ("torch", "transformers", "pyarrow", "duckdb")
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_index(state: IndexState, inputs: IndexInputs, tokenizer, index_id: str,
                settings: Settings | None = None) -> str:
    """Write ``state`` as index ``index_id`` (atomic: a killed write leaves no readable index)."""
    started = time.perf_counter()
    variants = [name for name in state.layers if name != DENSE]
    lookup = TokenLookup(inputs.corpus.documents)
    models = [DENSE, *variants]
    with atomic_directory(index_dir(index_id, settings)) as staging:
        tables = {"neurons": _neuron_rows(state, inputs, models),
                  "examples": _example_rows(state, inputs, variants, lookup),
                  "agreement": _agreement_rows(state, inputs, variants, lookup)}
        row_groups = {name: _write_by_neuron(table, staging / f"{name}.parquet", inputs.neurons,
                                             NEURONS_PER_ROW_GROUP[name]) for name, table in tables.items()}
        del tables
        kl_top, kl_tokens, mean_kl = _kl_tables(state, variants)
        _write(kl_top, staging / "kl_top.parquet", 10_000)
        _write(kl_tokens, staging / "kl_tokens.parquet", 100_000)
        _write(_documents_table(inputs.corpus.documents), staging / "documents.parquet", 1000)
        _write(_vocab_table(tokenizer, inputs.vocab), staging / "vocab.parquet", 100_000)
        timings = {**state.timings, "write_seconds": time.perf_counter() - started}
        manifest = {
            "id": index_id, "model": inputs.model_name, "variants": variants,
            "request": inputs.request.model_dump(), "corpus": inputs.corpus.description,
            "tokens": state.tokens, "documents": len(inputs.corpus.documents),
            "layers": inputs.layers, "neurons": inputs.neurons, "top_k": inputs.request.top_k,
            "context": inputs.request.context, "histogram_edges": HISTOGRAM_LOWER_EDGES,
            "density_threshold": DENSITY_THRESHOLD, "profile_tokens": len(inputs.profile_ids),
            "mean_kl": mean_kl, "row_groups": row_groups, "code_version": code_version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "timings": timings, "versions": _versions(),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return index_id
