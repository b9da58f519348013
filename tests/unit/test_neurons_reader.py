"""Bounded neuron reads: the per-neuron tables are cut into row groups on neuron boundaries, a
neuron page decodes exactly the one row group of each table that holds the neuron, and what it
reads equals a full DuckDB scan of the file."""

from __future__ import annotations

import duckdb
import pyarrow.parquet as pq
import pytest
import torch

from backend.neurons.build import IndexInputs, accumulate
from backend.neurons.queries import neuron_page
from backend.neurons.reader import PER_NEURON_TABLES, open_index
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
