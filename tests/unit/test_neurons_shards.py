"""Shard files and the shard plan of a sharded index build, without Ray: a state written to a shard
file reads back tensor for tensor, and shards of any cut, written and read back, merge to the
single-pass state (counts, histograms, top-k keys exactly;
activations and sums to float32 rounding)."""

from __future__ import annotations

import pytest
import torch

from backend.neurons.accumulators import merge_states
from backend.neurons.build import DENSE, IndexInputs, accumulate
from backend.neurons.request import IndexRequest
from backend.neurons.shard_files import read_shard, shard_name, state_tensors, write_shard
from backend.neurons.sharded import plan_shards
from tests.conftest import tiny_loaded
from tests.unit.neurons_helpers import distinct_corpus, pruned_copy


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("shards")
    dense = tiny_loaded("llama")
    variant = pruned_copy(dense)
    request = IndexRequest(corpus=distinct_corpus(folder / "corpus.txt"), tokens=1000, top_k=4, context=2,
                           batch_tokens=96)
    inputs = IndexInputs.prepare(request, dense)
    state = accumulate(dense, {"v": variant}, inputs, range(len(inputs.corpus.documents)))
    yield folder, dense, variant, inputs, state
    torch.set_num_threads(threads)


def test_plan_covers_every_document_once_with_balanced_tokens():
    documents = [[0] * (1 + length) for length in (5, 40, 3, 3, 30, 1, 8, 50, 2, 9)]
    for shards in (1, 2, 3, 4, 10, 25):
        ranges = plan_shards(documents, shards)
        assert [n for r in ranges for n in r] == list(range(len(documents)))
        assert 1 <= len(ranges) <= shards  # fewer when one document holds more than a share
        assert all(len(r) > 0 for r in ranges)
    two = plan_shards(documents, 2)
    tokens = [sum(len(documents[n]) - 1 for n in r) for r in two]
    assert abs(tokens[0] - tokens[1]) <= max(len(d) for d in documents)  # cut at the document nearest half


def _assert_same_state(got, expected, *, exact: bool) -> None:
    """Integer tensors (counts, histograms, top-k keys) equal; float ones equal when ``exact``, else to
    float32 rounding: another cut of the corpus batches documents with other neighbours, and the
    padded shapes change the last bits of an activation (as another --batch-tokens does)."""
    got_tensors, expected_tensors = state_tensors(got), state_tensors(expected)
    assert got_tensors.keys() == expected_tensors.keys()
    assert got.documents == expected.documents and got.tokens == expected.tokens
    for name, tensor in expected_tensors.items():
        if exact or not tensor.is_floating_point():
            assert torch.equal(got_tensors[name].nan_to_num(1234.5), tensor.nan_to_num(1234.5)), name
        else:
            torch.testing.assert_close(got_tensors[name], tensor, rtol=1e-5, atol=1e-5, equal_nan=True, msg=name)


def test_shard_file_round_trip_is_exact(single, tmp_path):
    _, _, _, inputs, state = single
    path = tmp_path / shard_name(range(len(inputs.corpus.documents)))
    write_shard(path, state, dense=DENSE, layers=inputs.layers, extra={"node_id": "n1"})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no staging file left
    back, meta = read_shard(path)
    assert meta["node_id"] == "n1" and meta["models"] == [DENSE, "v"]
    _assert_same_state(back, state, exact=True)
    assert not path.read_bytes().startswith(b"\x80")  # not a pickle


def test_shards_written_and_merged_equal_the_single_pass(single, tmp_path):
    _, dense, variant, inputs, state = single
    for count in (2, 5):
        parts = []
        for shard in plan_shards(inputs.corpus.documents, count):
            path = tmp_path / f"{count}-{shard_name(shard)}"
            write_shard(path, accumulate(dense, {"v": variant}, inputs, list(shard)), dense=DENSE,
                        layers=inputs.layers, extra={})
            parts.append(read_shard(path)[0])
        _assert_same_state(merge_states(parts[::-1]), state, exact=False)


def test_a_shard_file_already_there_is_kept(single, tmp_path):
    _, _, _, inputs, state = single
    path = tmp_path / "shard.safetensors"
    write_shard(path, state, dense=DENSE, layers=inputs.layers, extra={"node_id": "first"})
    write_shard(path, state, dense=DENSE, layers=inputs.layers, extra={"node_id": "second"})
    assert read_shard(path)[1]["node_id"] == "first"
