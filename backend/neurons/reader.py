"""Open indexes kept in memory for bounded reads: manifest, Parquet footers, vocabulary, documents,
and one neuron's rows read from the one row group that holds them.

An index never changes once written (its id names its request, models and code), so what is read
from it once is kept, per process, for the most recently used indexes; a folder replaced under
the same id (deleted and rebuilt) is noticed by its manifest's modification time. The writer cuts
the per-neuron tables into row groups on neuron boundaries and records the layout in the
manifest (``row_groups``, see ``backend.neurons.writer``), so a neuron's rows are located by
arithmetic and read by decoding that row group only, whatever the size of the index. Decoded
row groups are kept in a small LRU (``ROW_GROUP_CACHE_BYTES``): neighbouring neurons share them
(8 neurons per ``examples`` group, 32 per statistics group), so browsing along a layer decodes
each group once.
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
KEPT_READERS = 4  # open Parquet readers kept per table of an open index (each holds a file descriptor)
ROW_GROUP_CACHE_BYTES = 64 << 20  # decoded row groups kept per process (~100 kB for one page's three)


class DecodedGroup:
    """One decoded row group and where each neuron's rows lie in it (the writer sorts the rows by
    layer, neuron, so a neuron's rows are one slice; a group that is not sorted is filtered)."""

    def __init__(self, rows: pa.Table, neurons_per_layer: int) -> None:
        self.rows = rows
        self.nbytes = rows.get_total_buffer_size()
        keys = (rows.column("layer").to_numpy().astype(np.int64) * neurons_per_layer
                + rows.column("neuron").to_numpy())  # [rows] layer * N + neuron
        self._keys = keys if bool(np.all(keys[1:] >= keys[:-1])) else None

    def neuron_rows(self, layer: int, neuron: int, neurons_per_layer: int) -> pa.Table:
        if self._keys is None:
            rows = self.rows
            return rows.filter(pc.and_(pc.equal(rows["layer"], layer), pc.equal(rows["neuron"], neuron)))
        key = layer * neurons_per_layer + neuron
        start, stop = np.searchsorted(self._keys, [key, key + 1])
        return self.rows.slice(int(start), int(stop - start))


class RowGroupCache:
    """A byte-bounded LRU of decoded row groups, keyed by (opened index, table, group). An index
    never changes once written, so a kept group is exactly what decoding it again would give."""

    def __init__(self, capacity: int = ROW_GROUP_CACHE_BYTES) -> None:
        self.capacity = capacity
        self._groups: OrderedDict[tuple, DecodedGroup] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> DecodedGroup | None:
        with self._lock:
            group = self._groups.get(key)
            if group is not None:
                self._groups.move_to_end(key)
            return group

    def put(self, key: tuple, group: DecodedGroup) -> None:
        with self._lock:
            if key in self._groups or group.nbytes > self.capacity:
                return
            self._groups[key] = group
            self._bytes += group.nbytes
            while self._bytes > self.capacity:
                _, evicted = self._groups.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()
            self._bytes = 0


row_groups = RowGroupCache()


class IndexFiles:
    """One written index, opened once: its manifest, the footers of its per-neuron tables, and
    (on first use) its vocabulary and documents."""

    def __init__(self, index_id: str, folder: Path) -> None:
        self.id, self.folder = index_id, folder
        self.manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        self._footers = {name: pq.read_metadata(folder / f"{name}.parquet") for name in PER_NEURON_TABLES}
        self._lock = threading.Lock()
        self._vocab: list[str] | None = None
        self._vocab_array: np.ndarray | None = None
        self._documents: tuple[np.ndarray, np.ndarray] | None = None
        # open Parquet readers per table, each used by one thread at a time (a reader is not
        # shared between threads); opening one costs about as much as decoding a small group
        self._handles: dict[str, list[pq.ParquetFile]] = {name: [] for name in PER_NEURON_TABLES}
        self._handles_lock = threading.Lock()

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
        return self.decoded_group(table, group).neuron_rows(layer, neuron, self.manifest["neurons"])

    def decoded_group(self, table: str, group: int) -> DecodedGroup:
        """Row group ``group`` of ``table``, decoded (kept in ``row_groups``)."""
        key = (self, table, group)
        decoded = row_groups.get(key)
        if decoded is None:
            decoded = DecodedGroup(self.read_group(table, group), self.manifest["neurons"])
            row_groups.put(key, decoded)
        return decoded

    def read_group(self, table: str, group: int) -> pa.Table:
        """Row group ``group`` of ``table`` decoded from the file (no cache)."""
        with self._handles_lock:
            handles = self._handles[table]
            handle = handles.pop() if handles else None
        if handle is None:
            handle = pq.ParquetFile(self.folder / f"{table}.parquet", metadata=self._footers[table],
                                    pre_buffer=False)
        try:  # one thread: the group is small, and a server runs many of these reads side by side
            return handle.read_row_group(group, use_threads=False)
        finally:
            with self._handles_lock:
                kept = len(self._handles[table]) < KEPT_READERS
                if kept:
                    self._handles[table].append(handle)
            if not kept:
                handle.close()

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

    def vocab_array(self) -> np.ndarray:
        """[vocabulary + 1] object: token text by token id, then "" (for ids outside the vocabulary)."""
        with self._lock:
            held = self._vocab_array
        if held is None:
            held = np.array([*self.vocab(), ""], dtype=object)
            with self._lock:
                self._vocab_array = held
        return held

    def document_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Every document's token ids (the start token first) concatenated in document order
        ([corpus tokens] int32), and the offsets of each document in them ([documents + 1])."""
        with self._lock:
            if self._documents is None:
                table = pq.read_table(self.folder / "documents.parquet").sort_by("document")
                column = table.column("token_ids").combine_chunks()
                flat = column.values.to_numpy()  # [corpus tokens] int32
                offsets = column.offsets.to_numpy()  # [documents + 1]
                self._documents = (flat, offsets)
            return self._documents

    def document_tokens(self, documents: set[int]) -> dict[int, list[int]]:
        """Token ids (the start token first) of each of ``documents``."""
        flat, offsets = self.document_arrays()
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
