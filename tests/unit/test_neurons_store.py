"""The written index and its queries (neuron page, changed neurons, divergence, search), the CLI,
bad input (one line, exit 2, nothing written) and a build killed mid-pass."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from backend.cli import main
from backend.errors import NotFoundError, UserError
from backend.neurons.agreement import overall_top
from backend.neurons.build import DENSE, IndexInputs, accumulate
from backend.neurons.queries import changed_neurons, divergent_contexts, neuron_page, search_neurons
from backend.neurons.request import IndexRequest
from backend.neurons.store import indexes_root, latest_index, list_indexes
from backend.neurons.writer import write_index
from backend.pruning.variants import write_variant
from tests.conftest import REPO_ROOT, tiny_loaded
from tests.unit.neurons_helpers import distinct_corpus, pruned_copy


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def written(isolated_cache, tmp_path):
    dense = tiny_loaded("llama")
    variant = pruned_copy(dense)
    request = IndexRequest(
        corpus=distinct_corpus(tmp_path / "c.txt"), tokens=1000, top_k=4, context=2, batch_tokens=128
    )
    inputs = IndexInputs.prepare(request, dense)
    state = accumulate(dense, {"v": variant}, inputs, range(len(inputs.corpus.documents)))
    write_index(state, inputs, dense.tokenizer, "tiny-index")
    return state, inputs


def test_neuron_page_holds_the_state(written):
    state, inputs = written
    page = neuron_page("tiny-index", 1, 7, "v")
    stats = state.layers[DENSE][1]
    assert page["dense"]["stats"]["count"] == state.tokens
    assert page["dense"]["stats"]["mean"] == pytest.approx(stats.sum[7].item() / state.tokens)
    assert sum(page["dense"]["histogram"]) == state.tokens
    assert len(page["histogram_edges"]) == len(page["dense"]["histogram"])
    top = overall_top(stats, "positive")
    assert [e["activation"] for e in page["dense"]["top_positive"]] == pytest.approx(top.scores[7].tolist())
    for example in page["dense"]["top_positive"]:
        document = inputs.corpus.documents[example["document"]]
        assert example["token_ids"][example["focus"]] == document[example["position"]]
        assert example["activations"][example["focus"]] == pytest.approx(example["activation"], rel=1e-3, abs=1e-4)
    reread = page["variant"]["dense_top_reread"]
    assert len(reread) == len(page["dense"]["top_positive"]) + len(page["dense"]["top_negative"])
    assert all(
        row["variant_activation"] == pytest.approx(row["variant_activations"][row["focus"]], rel=1e-3, abs=1e-4)
        for row in reread
    )  # windows are stored as float16
    agreement = page["variant"]["agreement"]
    assert set(agreement) >= {
        "pearson",
        "mass_ratio",
        "mass_lost",
        "topk_overlap",
        "profile_correlation",
        "profile_correlation_floor",
        "token_overlap",
        "token_overlap_floor",
        "not_distinguishable",
    }
    assert agreement["mass_lost"] == pytest.approx(1 - agreement["mass_ratio"])
    assert 0.3 < page["weights_removed"]["fraction"] < 0.7
    json.dumps(page)  # plain JSON


def test_changed_divergence_search(written):
    state, _ = written
    rows = changed_neurons("tiny-index", "v", order="pearson", limit=500)
    values = [row["pearson"] for row in rows if row["pearson"] is not None]
    assert values == sorted(values) and len(rows) == 2 * 64
    assert all(row["layer"] == 0 for row in changed_neurons("tiny-index", "v", layer=0))
    assert not any(row["not_distinguishable"] for row in changed_neurons("tiny-index", "v", include_noise=False))
    lost = [row["mass_lost"] for row in changed_neurons("tiny-index", "v", order="mass_lost", limit=500)]
    assert lost == sorted(lost, reverse=True)
    divergence = divergent_contexts("tiny-index", "v", limit=5)
    assert divergence["mean_kl"] == pytest.approx(state.kl["v"].sum.item() / state.tokens)
    assert [row["kl"] for row in divergence["top"]] == pytest.approx(state.kl["v"].top.scores[0, :5].tolist())
    page = neuron_page("tiny-index", 0, 3)
    focus = page["dense"]["top_positive"][0]
    hits = search_neurons("tiny-index", focus["tokens"][focus["focus"]], limit=1000)
    assert {"layer": 0, "neuron": 3} in [{"layer": h["layer"], "neuron": h["neuron"]} for h in hits]


def test_bad_queries_are_user_errors(written):
    with pytest.raises(NotFoundError):
        neuron_page("no-such-index", 0, 0)
    with pytest.raises(UserError, match="layer 2 out of range"):
        neuron_page("tiny-index", 2, 0)
    with pytest.raises(UserError, match="neuron 64 out of range"):
        neuron_page("tiny-index", 0, 64)
    with pytest.raises(NotFoundError, match="not in index"):
        neuron_page("tiny-index", 0, 0, "w")
    with pytest.raises(UserError, match="unknown order"):
        changed_neurons("tiny-index", "v", order="size")


def test_listing_latest_and_stale(written):
    assert [row["id"] for row in list_indexes()] == ["tiny-index"]
    assert latest_index("tiny-llama", "v") == "tiny-index" and latest_index("tiny-llama", "w") is None
    path = indexes_root() / "tiny-index" / "manifest.json"
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "code_version": "other"}))
    assert list_indexes()[0]["stale"] and latest_index("tiny-llama") is None


def _variant_of(model_dir, variant_id: str, base: str) -> str:
    loaded = tiny_loaded("llama")
    generator = torch.Generator().manual_seed(0)
    masks = {
        name: torch.rand(param.shape, generator=generator) < 0.5
        for name, param in loaded.model.named_parameters()
        if name.endswith("mlp.down_proj.weight")
    }
    write_variant(variant_id, {"base_model": base, "method": "random"}, masks=masks)
    return variant_id


def test_cli_builds_and_reads(isolated_cache, tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    variant = _variant_of(model_dir, "tiny-random", str(model_dir.resolve()))
    corpus = distinct_corpus(tmp_path / "c.txt")
    argv = [
        "index",
        "--model",
        str(model_dir),
        "--variants",
        variant,
        "--corpus",
        corpus,
        "--tokens",
        "1000",
        "--top-k",
        "3",
        "--batch-tokens",
        "256",
    ]
    assert main(argv) == 0
    index_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert [row["id"] for row in list_indexes()] == [index_id]
    assert main(argv) == 0  # the same request reuses the index
    assert capsys.readouterr().out.strip().splitlines()[-1] == index_id
    assert main(["neuron", index_id, "1:5", "--variant", variant, "--json"]) == 0
    page = json.loads(capsys.readouterr().out)
    assert {"document", "position", "activation", "tokens", "focus"} <= set(page["dense"]["top_positive"][0])
    assert main(["changed", index_id, "--variant", variant, "--limit", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 3
    for bad in (
        ["neuron", index_id, "2:0"],
        ["neuron", index_id, "0:64"],
        ["neuron", index_id, "x"],
        ["neuron", "nope", "0:0"],
        ["changed", index_id, "--variant", "nope"],
    ):
        assert main(bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1


def test_cli_bad_input_writes_nothing(isolated_cache, tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    other = _variant_of(model_dir, "of-another-model", "facebook/opt-125m")
    corpus = distinct_corpus(tmp_path / "c.txt")
    unreadable = tmp_path / "secret.txt"
    unreadable.write_text("text")
    unreadable.chmod(0)
    cases = [
        ["--corpus", f"file:{tmp_path / 'missing.txt'}"],
        ["--corpus", corpus, "--variants", other],
        ["--corpus", corpus, "--variants", "no-such-variant"],
        ["--corpus", corpus, "--tokens", "10"],
    ]
    if os.geteuid() != 0:  # root reads a file whatever its mode
        cases.append(["--corpus", f"file:{unreadable}"])
    for extra in cases:
        assert main(["index", "--model", str(model_dir), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1, err
        assert not indexes_root().exists() or not any(indexes_root().iterdir())


def test_killed_build_leaves_no_index_and_a_rerun_completes(isolated_cache, tiny_model_dir, tmp_path, capsys):
    model_dir = tiny_model_dir("llama")
    corpus = distinct_corpus(tmp_path / "c.txt", documents=400)
    argv = ["index", "--model", str(model_dir), "--corpus", corpus, "--tokens", "8000", "--batch-tokens", "64"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    seen = threading.Event()

    def watch() -> None:  # tqdm writes "batch N/M" to stderr while the pass runs
        buffer = b""
        while chunk := process.stderr.read1(4096):
            buffer += chunk
            if b"batch 3/" in buffer:
                seen.set()

    threading.Thread(target=watch, daemon=True).start()
    assert seen.wait(300), "the build never reached its third batch"
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert list_indexes() == []
    assert main(argv) == 0
    index_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert [row["id"] for row in list_indexes()] == [index_id]
    assert [path.name for path in indexes_root().iterdir()] == [index_id]  # the killed build's staging is gone
    time.sleep(0)
