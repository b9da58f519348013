"""Open indexes kept in memory for bounded reads: manifest, Parquet footers, vocabulary, documents,
and one neuron's rows read from the one row group that holds them.

An index never changes once written (its id names its request, models and code), so what is read
from it once is kept, per process, for the most recently used indexes; a folder replaced under
the same id (deleted and rebuilt) is noticed by its manifest's modification time. The writer cuts
the per-neuron tables into row groups on neuron boundaries and records the layout in the
manifest (``row_groups``, see ``backend.neurons.writer``), so a neuron's rows are located by
arithmetic and read by decoding that row group only, whatever the size of the index.
"""

from __future__ import annotations

import json
import threading
from bisect import bisect_left
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backend.config import Settings
from backend.errors import NotFoundError
from backend.neurons.store import MANIFEST, index_dir

PER_NEURON_TABLES = ("neurons", "examples", "agreement")
OPEN_INDEXES = 8  # indexes kept open per process (each holds its vocabulary and documents)


class IndexFiles:
    """One written index, opened once: its manifest, the footers of its per-neuron tables, and
    (on first use) its vocabulary and documents."""

    def __init__(self, index_id: str, folder: Path) -> None:
        self.id, self.folder = index_id, folder
        self.manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        self._footers = {name: pq.read_metadata(folder / f"{name}.parquet") for name in PER_NEURON_TABLES}
        self._lock = threading.Lock()
        self._vocab: list[str] | None = None
        self._documents: tuple[np.ndarray, np.ndarray] | None = None

    def row_group(self, table: str, layer: int, neuron: int) -> int | None:
        """The row group of ``table`` holding (layer, neuron)'s rows; None when it has none."""
        layout = self.manifest["row_groups"][table]
        block = (layer * self.manifest["neurons"] + neuron) // layout["neurons_per_group"]
        skipped = layout["skipped"]  # sorted blocks without rows (no row group written)
        before = bisect_left(skipped, block)
        if before < len(skipped) and skipped[before] == block:
            return None
        group = block - before
        return group if group < self._footers[table].num_row_groups else None

    def neuron_rows(self, table: str, layer: int, neuron: int) -> pa.Table:
        """The rows of ``table`` for (layer, neuron), in file order."""
        path = self.folder / f"{table}.parquet"
        footer = self._footers[table]
        if "row_groups" not in self.manifest:  # an index written before the layout was recorded
            return pq.read_table(path, filters=[("layer", "=", layer), ("neuron", "=", neuron)])
        group = self.row_group(table, layer, neuron)
        if group is None:
            return footer.schema.to_arrow_schema().empty_table()
        # one thread: the group is small, and a server runs many of these reads side by side
        with pq.ParquetFile(path, metadata=footer) as handle:
            rows = handle.read_row_group(group, use_threads=False)
        return rows.filter(pc.and_(pc.equal(rows["layer"], layer), pc.equal(rows["neuron"], neuron)))

    def vocab(self) -> list[str]:
        """Token text by token id."""
        with self._lock:
            if self._vocab is None:
                table = pq.read_table(self.folder / "vocab.parquet")
                ids = table.column("token_id").to_numpy()
                texts = [""] * (int(ids.max()) + 1 if len(ids) else 0)
                for token_id, text in zip(ids.tolist(), table.column("token").to_pylist(), strict=True):
                    texts[token_id] = text
                self._vocab = texts
            return self._vocab

    def document_tokens(self, documents: set[int]) -> dict[int, list[int]]:
        """Token ids (the start token first) of each of ``documents``."""
        with self._lock:
            if self._documents is None:
                table = pq.read_table(self.folder / "documents.parquet").sort_by("document")
                column = table.column("token_ids").combine_chunks()
                flat = column.values.to_numpy()  # [corpus tokens] int32
                offsets = column.offsets.to_numpy()  # [documents + 1]
                self._documents = (flat, offsets)
            flat, offsets = self._documents
        return {document: flat[offsets[document]:offsets[document + 1]].tolist() for document in documents}


_open: OrderedDict[str, tuple[int, IndexFiles]] = OrderedDict()
_open_lock = threading.Lock()


def open_index(index_id: str, settings: Settings | None = None) -> IndexFiles:
    """The opened index ``index_id`` (NotFoundError when there is no finished index of that id)."""
    folder = index_dir(index_id, settings)
    try:
        stamp = (folder / MANIFEST).stat().st_mtime_ns
    except OSError:
        raise NotFoundError(f"unknown index {index_id!r} (see `prunelens indexes`)") from None
    key = str(folder)
    with _open_lock:
        held = _open.get(key)
        if held is not None and held[0] == stamp:
            _open.move_to_end(key)
            return held[1]
    opened = IndexFiles(index_id, folder)  # outside the lock: other indexes stay readable meanwhile
    with _open_lock:
        _open[key] = (stamp, opened)
        _open.move_to_end(key)
        while len(_open) > OPEN_INDEXES:
            _open.popitem(last=False)
    return opened
