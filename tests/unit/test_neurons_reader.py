"""Bounded neuron reads: the per-neuron tables are cut into row groups on neuron boundaries, a
neuron page decodes exactly the one row group of each table that holds the neuron, and what it
reads equals a full DuckDB scan of the file."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from backend.neurons.build import IndexInputs, accumulate
from backend.neurons.queries import neuron_page
from backend.neurons.reader import PER_NEURON_TABLES, RowGroupCache, open_index, row_groups
from backend.neurons.request import IndexRequest
from backend.neurons.store import indexes_root
from backend.neurons.writer import NEURONS_PER_ROW_GROUP, write_index
from tests.conftest import tiny_loaded
from tests.unit.neurons_helpers import distinct_corpus, pruned_copy

INDEX = "tiny-reader-index"


@pytest.fixture
def written(isolated_cache, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dense = tiny_loaded("llama")
        request = IndexRequest(corpus=distinct_corpus(tmp_path / "c.txt"), tokens=1000, top_k=4, context=2,
                               batch_tokens=256)
        inputs = IndexInputs.prepare(request, dense)
        state = accumulate(dense, {"v": pruned_copy(dense)}, inputs, range(len(inputs.corpus.documents)))
        write_index(state, inputs, dense.tokenizer, INDEX)
    finally:
        torch.set_num_threads(threads)
    return inputs


def _full_scan(table: str, layer: int, neuron: int) -> int:
    path = str(indexes_root() / INDEX / f"{table}.parquet")
    return duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE layer = ? AND neuron = ?",
                                    [layer, neuron]).fetchone()[0]


def test_row_groups_hold_whole_blocks_of_neurons(written):
    inputs = written
    files = open_index(INDEX)
    for table in PER_NEURON_TABLES:
        footer = pq.read_metadata(indexes_root() / INDEX / f"{table}.parquet")
        per_group = NEURONS_PER_ROW_GROUP[table]
        blocks = -(-inputs.layers * inputs.neurons // per_group)
        assert footer.num_row_groups == blocks - len(files.manifest["row_groups"][table]["skipped"])
        columns = footer.schema.to_arrow_schema().names
        for group in range(footer.num_row_groups):
            statistics = {name: footer.row_group(group).column(columns.index(name)).statistics
                          for name in ("layer", "neuron")}
            first = statistics["layer"].min * inputs.neurons + statistics["neuron"].min
            last = statistics["layer"].max * inputs.neurons + statistics["neuron"].max
            # the group's neurons lie in one block: the neurons before and after it are elsewhere
            assert first // per_group == last // per_group
            assert files.row_group(table, *divmod(first, inputs.neurons)) == group


@pytest.mark.parametrize(("layer", "neuron"), [(0, 0), (0, 37), (1, 63)])
def test_a_neuron_page_reads_only_its_row_groups(written, monkeypatch, layer, neuron):
    reads: list[tuple[str, int]] = []
    original = pq.ParquetFile.read_row_group

    def recorded(self, index, *args, **kwargs):
        table = next(name for name, column in (("examples", "window"), ("agreement", "pearson"),
                                               ("neurons", "histogram")) if column in self.schema_arrow.names)
        reads.append((table, index))
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", recorded)
    files = open_index(INDEX)
    page = neuron_page(INDEX, layer, neuron, "v")
    assert sorted(reads) == sorted((table, files.row_group(table, layer, neuron)) for table in PER_NEURON_TABLES)
    # the one group read holds every row of the neuron that a scan of the whole file finds
    for table in PER_NEURON_TABLES:
        assert files.neuron_rows(table, layer, neuron).num_rows == _full_scan(table, layer, neuron) > 0
    shown = sum(len(page[model][side]) for model in ("dense", "variant") for side in ("top_positive", "top_negative"))
    assert shown + len(page["variant"]["dense_top_reread"]) == _full_scan("examples", layer, neuron)


def test_a_kept_row_group_gives_exactly_what_an_uncached_read_gives(written, monkeypatch):
    inputs = written
    files = open_index(INDEX)
    row_groups.clear()
    neurons = [(0, 0), (0, 5), (1, inputs.neurons - 1)]
    first = {(table, key): files.neuron_rows(table, *key) for table in PER_NEURON_TABLES for key in neurons}
    reads: list[int] = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, index, *a, **k: reads.append(index) or original(self, index, *a, **k))
    for (table, key), rows in first.items():
        path = indexes_root() / INDEX / f"{table}.parquet"
        scanned = pq.read_table(path, filters=[("layer", "=", key[0]), ("neuron", "=", key[1])])
        kept = files.neuron_rows(table, *key)
        assert kept.num_rows > 0 and kept.equals(scanned) and rows.equals(scanned)
    assert reads == []  # the second reads all came from the kept groups
    row_groups.clear()
    assert all(files.neuron_rows(table, *key).equals(rows) for (table, key), rows in first.items())
    assert len(reads) == len({(table, files.row_group(table, *key)) for table, key in first})


def test_the_row_group_cache_stays_within_its_bytes(written):
    files = open_index(INDEX)
    group = files.decoded_group("examples", 0)
    cache = RowGroupCache(capacity=2 * group.nbytes)
    for number in range(4):
        cache.put(("x", number), group)
    assert [cache.get(("x", number)) is not None for number in range(4)] == [False, False, True, True]


def test_page_windows_are_the_stored_float16_in_their_shortest_decimal(written):
    page = neuron_page(INDEX, 1, 3, "v")
    stored = pq.read_table(indexes_root() / INDEX / "examples.parquet",
                           filters=[("layer", "=", 1), ("neuron", "=", 3)]).to_pylist()
    by_key = {(row["model"], row["side"], row["rank"]): row for row in stored}
    documents = pq.read_table(indexes_root() / INDEX / "documents.parquet").to_pylist()
    tokens_of = {row["document"]: row["token_ids"] for row in documents}
    context = open_index(INDEX).manifest["context"]
    blocks = [("dense", side, page["dense"][f"top_{side}"]) for side in ("positive", "negative")]
    blocks += [("v", side, page["variant"][f"top_{side}"]) for side in ("positive", "negative")]
    blocks += [("v", f"reread_{side}", [row for row in page["variant"]["dense_top_reread"] if row["side"] == side])
               for side in ("positive", "negative")]
    checked = 0
    for model, side, examples in blocks:
        for rank, example in enumerate(examples):
            row = by_key[(model, side, rank)]
            window = np.array(row["window"], dtype=np.float16)  # [2·context + 1]
            inside = ~np.isnan(window)
            shown = example["variant_activations"] if side.startswith("reread") else example["activations"]
            # exactly the stored float16 values, printed in at most 5 significant digits
            assert np.array_equal(np.array(shown, dtype=np.float16), window[inside])
            assert all(float(f"{value:.5g}") == value for value in shown)
            expected = np.abs(window[inside].astype(np.float64))
            assert np.all(np.abs(np.array(shown) - window[inside]) <= np.maximum(2**-11 * expected, 2**-25))
            places = [row["position"] - context + offset for offset in np.flatnonzero(inside)]
            if not side.startswith("reread"):
                assert example["token_ids"] == [tokens_of[row["document"]][place] for place in places]
                assert example["focus"] == places.index(row["position"])
            checked += 1
    assert checked == len(stored)


def test_the_per_neuron_tables_are_lz4_compressed(written):
    for table in PER_NEURON_TABLES:  # cheaper to decode per small group than zstd (writer.py)
        footer = pq.read_metadata(indexes_root() / INDEX / f"{table}.parquet")
        group = footer.row_group(0)
        assert {group.column(i).compression for i in range(group.num_columns)} == {"LZ4"}
