"""Reading an index: neuron pages, changed neurons, divergent contexts, token search (plain JSON dicts).

A neuron page reads one row group of each per-neuron table (``backend.neurons.reader``: the
writer records which row group holds which neurons), with the vocabulary and the documents kept in
memory; the corpus-wide questions (changed neurons, divergence, token search) are DuckDB queries
over the Parquet tables.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import duckdb

from backend.config import Settings
from backend.errors import NotFoundError, UserError
from backend.neurons.build import DENSE
from backend.neurons.page import example_blocks
from backend.neurons.reader import open_index

ORDERS = {  # change measure -> SQL order, most changed first (NaN last)
    "pearson": "pearson ASC NULLS LAST",
    "mass_lost": "mass_lost DESC NULLS LAST",
    "topk_overlap": "topk_overlap ASC NULLS LAST",
    "profile_correlation": "profile_correlation ASC NULLS LAST",
}
AGREEMENT_FIELDS = ("pearson", "mass_ratio", "mass_lost", "topk_overlap", "topk_overlap_negative",
                    "profile_correlation", "profile_correlation_floor", "token_overlap", "token_overlap_floor",
                    "not_distinguishable")
MIN_TOKEN_COUNT = 5  # a token's mean KL is ranked only when it occurs this often (fewer is noise)
_local = threading.local()


def _connection() -> duckdb.DuckDBPyConnection:
    """One DuckDB connection per thread (a connection is not shared between threads)."""
    if getattr(_local, "connection", None) is None:
        _local.connection = duckdb.connect()
    return _local.connection


def _table(folder: Path, name: str) -> str:
    path = str(folder / f"{name}.parquet").replace("'", "''")
    return f"read_parquet('{path}')"


def _rows(sql: str, parameters: list | None = None) -> list[dict]:
    cursor = _connection().execute(sql, parameters or [])
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _clean(value):
    """JSON-safe: NaN/inf become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Index:
    def __init__(self, index_id: str, settings: Settings | None) -> None:
        self.files = open_index(index_id, settings)
        self.manifest = self.files.manifest
        self.folder = self.files.folder
        self.id = index_id

    def table(self, name: str) -> str:
        return _table(self.folder, name)

    def check_neuron(self, layer: int, neuron: int) -> None:
        layers, neurons = self.manifest["layers"], self.manifest["neurons"]
        if not 0 <= layer < layers:
            raise UserError(f"layer {layer} out of range: this model has layers 0..{layers - 1}")
        if not 0 <= neuron < neurons:
            raise UserError(f"neuron {neuron} out of range: layers have neurons 0..{neurons - 1}")

    def check_variant(self, variant: str | None) -> None:
        if variant is not None and variant not in self.manifest["variants"]:
            held = ", ".join(self.manifest["variants"]) or "none"
            raise NotFoundError(f"variant {variant!r} is not in index {self.id} (it holds: {held})")

    def token_texts(self, token_ids: set[int]) -> dict[int, str]:
        vocab = self.files.vocab()
        return {token: vocab[token] for token in token_ids if 0 <= token < len(vocab)}

    def document_tokens(self, documents: set[int]) -> dict[int, list[int]]:
        return self.files.document_tokens(documents)

    def neuron_rows(self, table: str, layer: int, neuron: int) -> list[dict]:
        """(layer, neuron)'s rows of a statistics table (``neurons``, ``agreement``), as plain values."""
        return self.files.neuron_rows(table, layer, neuron).to_pylist()


def neuron_page(index_id: str, layer: int, neuron: int, variant: str | None = None,
                settings: Settings | None = None) -> dict:
    """Everything the index holds on one neuron, dense and (optionally) one variant."""
    index = _Index(index_id, settings)
    index.check_neuron(layer, neuron)
    index.check_variant(variant)
    models = [DENSE] + ([variant] if variant else [])
    stats_rows = {row["model"]: row for row in index.neuron_rows("neurons", layer, neuron) if row["model"] in models}
    built = example_blocks(index.files, index.files.neuron_rows("examples", layer, neuron), models)

    def listed(model: str, side: str) -> list[dict]:
        return built.get((model, side), [])

    def block(model: str) -> dict:
        stats = stats_rows[model]
        return {
            "stats": {name: _clean(float(stats[name])) for name in ("mean", "mean_abs", "std", "max", "min", "density")}
            | {"count": int(stats["count"]), "density_threshold": index.manifest["density_threshold"]},
            "histogram": [int(count) for count in stats["histogram"]],
            "top_positive": listed(model, "positive"), "top_negative": listed(model, "negative"),
        }

    page = {
        "index": index_id, "model": index.manifest["model"], "layer": layer, "neuron": neuron,
        "tokens": index.manifest["tokens"], "corpus": index.manifest["corpus"],
        "variants": index.manifest["variants"], "histogram_edges": index.manifest["histogram_edges"],
        "dense": block(DENSE), "variant": None, "weights_removed": None,
    }
    if variant:
        agreement = next(row for row in index.neuron_rows("agreement", layer, neuron) if row["variant"] == variant)
        reread = []
        for side in ("positive", "negative"):
            pairs = zip(listed(DENSE, side), listed(variant, f"reread_{side}"), strict=True)
            for dense_example, variant_example in pairs:
                reread.append({**dense_example, "side": side, "dense_activation": dense_example["activation"],
                               "variant_activation": variant_example["activation"],
                               "dense_activations": dense_example["activations"],
                               "variant_activations": variant_example["activations"]})
        page["variant"] = {"id": variant, **block(variant),
                           "agreement": {name: _clean(_plain(agreement[name])) for name in AGREEMENT_FIELDS},
                           "dense_top_reread": reread}
        page["weights_removed"] = {name: _clean(float(agreement[f"weights_removed_{name}"]))
                                   for name in ("fraction", "inputs", "output")}
    return page


def _plain(value):
    if isinstance(value, bool):
        return value
    return float(value) if value is not None else None


def changed_neurons(index_id: str, variant: str, layer: int | None = None, order: str = "pearson",
                    limit: int = 50, include_noise: bool = True, settings: Settings | None = None) -> list[dict]:
    """Neurons of ``variant`` ranked by change (most changed first) with their chance floors."""
    index = _Index(index_id, settings)
    index.check_variant(variant)
    if order not in ORDERS:
        raise UserError(f"unknown order {order!r}: use {', '.join(ORDERS)}")
    if limit < 1:
        raise UserError("limit must be at least 1")
    conditions: list[str] = ["variant = ?"]
    parameters: list[object] = [variant]
    if layer is not None:
        index.check_neuron(layer, 0)
        conditions.append("layer = ?")
        parameters.append(layer)
    if not include_noise:
        conditions.append("NOT not_distinguishable")
    rows = _rows(f"SELECT * FROM {index.table('agreement')} WHERE {' AND '.join(conditions)} "
                 f"ORDER BY {ORDERS[order]}, layer, neuron LIMIT {int(limit)}", parameters)
    return [{"layer": row["layer"], "neuron": row["neuron"],
             **{name: _clean(_plain(row[name])) for name in AGREEMENT_FIELDS},
             "weights_removed": _clean(float(row["weights_removed_fraction"]))} for row in rows]


def divergent_contexts(index_id: str, variant: str, limit: int = 50, settings: Settings | None = None) -> dict:
    """Where the variant's next-token distribution departs most from the dense model's."""
    index = _Index(index_id, settings)
    index.check_variant(variant)
    if limit < 1:
        raise UserError("limit must be at least 1")
    top = _rows(f"SELECT document, position, kl FROM {index.table('kl_top')} WHERE variant = ? "
                f"ORDER BY rank LIMIT {int(limit)}", [variant])
    documents = index.document_tokens({row["document"] for row in top})
    context = index.manifest["context"]
    token_rows = _rows(f"SELECT token_id, mean_kl, count FROM {index.table('kl_tokens')} WHERE variant = ? "
                       f"AND count >= {MIN_TOKEN_COUNT} ORDER BY mean_kl DESC, token_id LIMIT {int(limit)}", [variant])
    windows = {}
    for row in top:
        start = max(1, row["position"] - context)
        windows[(row["document"], row["position"])] = documents[row["document"]][start:row["position"] + context + 1]
    texts = index.token_texts({t for ids in windows.values() for t in ids} | {row["token_id"] for row in token_rows})
    contexts = []
    for row in top:
        ids = windows[(row["document"], row["position"])]
        contexts.append({"document": row["document"], "position": row["position"], "kl": row["kl"],
                         "tokens": [texts.get(t, "") for t in ids], "token_ids": ids,
                         "focus": row["position"] - max(1, row["position"] - context)})
    return {"mean_kl": index.manifest["mean_kl"][variant], "top": contexts,
            "tokens": [{"token": texts.get(row["token_id"], ""), "token_id": row["token_id"],
                        "mean_kl": row["mean_kl"], "count": row["count"]} for row in token_rows],
            "min_token_count": MIN_TOKEN_COUNT}


def search_neurons(index_id: str, token: str, variant: str | None = None, limit: int = 50,
                   settings: Settings | None = None) -> list[dict]:
    """Neurons whose top examples (either sign) sit on ``token`` (case and surrounding spaces
    ignored), most hits first."""
    index = _Index(index_id, settings)
    index.check_variant(variant)
    wanted = token.strip().lower()
    if not wanted:
        raise UserError("empty token")
    if limit < 1:
        raise UserError("limit must be at least 1")
    ids = [row["token_id"] for row in _rows(
        f"SELECT token_id FROM {index.table('vocab')} WHERE lower(trim(token)) = ?", [wanted])]
    if not ids:
        return []
    rows = _rows(
        f"SELECT layer, neuron, count(*) AS hits, max(activation) AS max_activation "
        f"FROM {index.table('examples')} WHERE model = ? AND side IN ('positive', 'negative') "
        f"AND token_id IN ({','.join(str(int(t)) for t in ids)}) GROUP BY layer, neuron "
        f"ORDER BY hits DESC, max_activation DESC, layer, neuron LIMIT {int(limit)}", [variant or DENSE])
    return [{"layer": row["layer"], "neuron": row["neuron"], "hits": int(row["hits"]),
             "max_activation": float(row["max_activation"])} for row in rows]
