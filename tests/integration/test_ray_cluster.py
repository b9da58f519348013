"""Sharded index builds on a real two-node Ray cluster on loopback (``tests.ray_cluster``): the
sharded index equals the single-process one, with shards on both nodes; a worker killed mid-shard
loses nothing (the shard is rerun, a shard file already there is reused, none twice)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from backend.cli import main
from backend.neurons.build import DENSE, IndexInputs, accumulate
from backend.neurons.models import load_index_models
from backend.neurons.request import IndexRequest
from backend.neurons.shard_files import shard_name, write_shard
from backend.neurons.sharded import KILL_ONCE_ENV, SHARDS_RECORD, plan_shards, shards_dir
from backend.neurons.store import index_dir
from backend.pruning.variants import write_variant
from tests.conftest import tiny_loaded
from tests.ray_cluster import CLUSTER_ENVIRONMENT, MISSING_REASON, loopback_cluster, ray_available, wait_for_nodes
from tests.unit.neurons_helpers import distinct_corpus

pytestmark = pytest.mark.skipif(not ray_available(), reason=MISSING_REASON)
TABLES = ("neurons", "examples", "agreement", "kl_top", "kl_tokens", "documents", "vocab")


@pytest.fixture(scope="module")
def cluster():
    """Address and temporary folder of a head node and a second node, one CPU each."""
    with loopback_cluster() as (address, temp_dir):
        yield address, temp_dir


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    """This test's driver talks to the cluster (RAY_ADDRESS set for this test only)."""
    address, _ = cluster
    monkeypatch.setenv("RAY_ADDRESS", address)
    for key, value in CLUSTER_ENVIRONMENT.items():
        monkeypatch.setenv(key, value)
    import ray

    ray.init(address="auto", log_to_driver=False)
    wait_for_nodes(2)
    yield cluster
    ray.shutdown()


@pytest.fixture
def index_case(isolated_cache, tmp_path, capsys):
    """A tiny LLaMA saved as a model folder (workers load it by path), a random-mask variant, a
    corpus of 24 documents, and the single-process index of it: (argv, index id, its tables)."""
    model_dir = tmp_path / "tiny-llama"
    loaded = tiny_loaded("llama")
    loaded.model.save_pretrained(model_dir, safe_serialization=True)
    loaded.tokenizer.save_pretrained(model_dir)
    generator = torch.Generator().manual_seed(0)
    masks = {name: torch.rand(param.shape, generator=generator) < 0.5
             for name, param in loaded.model.named_parameters() if name.endswith("mlp.down_proj.weight")}
    write_variant("tiny-random", {"base_model": str(model_dir.resolve()), "method": "random"}, masks=masks)
    argv = ["index", "--model", str(model_dir), "--variants", "tiny-random", "--corpus",
            distinct_corpus(tmp_path / "corpus.txt"), "--tokens", "1000", "--top-k", "3", "--context", "2",
            "--batch-tokens", "128"]
    assert main(argv) == 0
    index_id = capsys.readouterr().out.strip().splitlines()[-1]
    local = _tables(index_id)
    shutil.rmtree(index_dir(index_id))
    return argv, index_id, local


def _tables(index_id: str) -> dict[str, pd.DataFrame]:
    folder = index_dir(index_id)
    return {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}


def _assert_same_tables(got: dict[str, pd.DataFrame], expected: dict[str, pd.DataFrame]) -> None:
    """Every row and column equal: integers, strings and lists of token ids exactly; floats (and
    float windows) to float32 rounding, NaN where NaN."""
    for name, frame in expected.items():
        other = got[name]
        assert list(other.columns) == list(frame.columns) and len(other) == len(frame), name
        for column in frame.columns:
            left, right = other[column].to_list(), frame[column].to_list()
            if _is_float(frame[column]):
                assert all(torch.allclose(_f64(a), _f64(b), rtol=1e-5, atol=1e-5, equal_nan=True)
                           for a, b in zip(left, right, strict=True)), (name, column)
            else:
                assert [_plain(a) for a in left] == [_plain(b) for b in right], (name, column)


def _is_float(column: pd.Series) -> bool:
    first = column.iloc[0] if len(column) else None
    return column.dtype.kind == "f" or (hasattr(first, "dtype") and first.dtype.kind == "f")


def _f64(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float64)


def _plain(value):
    return value.tolist() if hasattr(value, "tolist") else value


def _record(index_id: str) -> list[dict]:
    return json.loads((index_dir(index_id) / SHARDS_RECORD).read_text())["shards"]


def test_sharded_index_equals_the_single_process_one_with_shards_on_both_nodes(on_cluster, index_case, capsys):
    argv, index_id, local = index_case
    assert main([*argv, "--ray-address", "auto", "--shards", "4"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == index_id  # the same id: the same index
    _assert_same_tables(_tables(index_id), local)
    shards = _record(index_id)
    documents = len(local["documents"])
    assert len(shards) == 4 and sorted(n for shard in shards for n in shard["documents"]) == list(range(documents))
    assert len({shard["node_id"] for shard in shards}) == 2  # both nodes built shards
    assert not shards_dir(index_id).exists()  # merged and cleaned up


def test_a_killed_worker_loses_nothing_and_a_present_shard_is_reused(on_cluster, index_case, monkeypatch,
                                                                      tmp_path, capsys):
    argv, index_id, local = index_case
    # An interrupted earlier build: its plan (3 shards) and its first shard file are there.
    request = IndexRequest(model=argv[2], variants=["tiny-random"], corpus=argv[6], tokens=1000, top_k=3, context=2,
                           batch_tokens=128)
    dense, variants = load_index_models(request)
    inputs = IndexInputs.prepare(request, dense)
    plan = plan_shards(inputs.corpus.documents, 3)
    folder = shards_dir(index_id)
    folder.mkdir(parents=True)
    (folder / "plan.json").write_text(json.dumps({"shards": [[r.start, r.stop] for r in plan]}))
    write_shard(folder / shard_name(plan[0]), accumulate(dense, variants, inputs, plan[0]), dense=DENSE,
                layers=inputs.layers, extra={"index_id": index_id, "range": [plan[0].start, plan[0].stop],
                                             "node_id": "earlier-build", "worker_pid": os.getpid()})
    # The first shard task to pass its first batch SIGKILLs its own worker process.
    faults = tmp_path / "faults"
    faults.mkdir()
    monkeypatch.setenv(KILL_ONCE_ENV, str(faults))
    assert main([*argv, "--ray-address", "auto"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == index_id
    killed_pid = int((faults / "killed").read_text())
    _assert_same_tables(_tables(index_id), local)
    shards = _record(index_id)
    assert [shard["range"] for shard in shards] == [[r.start, r.stop] for r in plan]  # each shard once
    assert shards[0]["reused"] and shards[0]["node_id"] == "earlier-build"
    assert not any(shard["reused"] for shard in shards[1:])
    assert killed_pid not in {shard["worker_pid"] for shard in shards}  # the killed attempt left no shard
    assert not list(Path(index_dir(index_id).parent).glob(".shards-*"))
