"""The runner on tiny models: lm-eval's accuracy equals a hand computation; stored results are reused;
variants are evaluated in memory and the dense weights come back."""

from __future__ import annotations

import json
import math

import datasets
import pytest
import torch

from backend.cli import main
from backend.errors import UserError
from backend.evaluation import runner
from backend.evaluation.registry import TASKS
from backend.evaluation.runner import evaluate
from backend.evaluation.store import ResultsStore
from backend.pruning.variants import variant_applied, write_variant
from tests.conftest import tiny_loaded

SST2_PROMPT = "{}\nQuestion: Is this sentence positive or negative?\nAnswer:"


@pytest.fixture
def store(isolated_cache, monkeypatch) -> ResultsStore:
    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    return ResultsStore.from_settings()


def _loglikelihood(loaded, context: str, continuation: str) -> float:
    """Sum of log p(continuation tokens | context) as lm-eval splits the pair: the whole text is
    tokenized once and the context's own tokens are cut off the front."""
    whole = loaded.tokenizer.encode(context + continuation)
    context_len = len(loaded.tokenizer.encode(context))
    ids = torch.tensor([whole])
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(ids).logits[0].double(), dim=-1)  # [tokens, vocab]
    return sum(float(logprobs[position - 1, whole[position]]) for position in range(context_len, len(whole)))


def _hand_sst2_correct(loaded, limit: int) -> dict[int, float]:
    """doc id -> 1.0 where the higher-likelihood answer is the label, on the examples that
    ``limit`` with the default seed draws from the 872 validation rows."""
    rows = datasets.load_from_disk(str(TASKS["sst2"].packaged.path()))
    correct = {}
    for index in runner.sample_indices(len(rows), limit, runner.DEFAULT_SAMPLE_SEED):
        row = rows[index]
        context = SST2_PROMPT.format(row["sentence"])
        scores = [_loglikelihood(loaded, context, " " + choice) for choice in ("negative", "positive")]
        correct[index] = float(max(range(2), key=scores.__getitem__) == row["label"])
    return correct


def _hand_sst2_accuracy(loaded, limit: int) -> tuple[float, float]:
    correct = list(_hand_sst2_correct(loaded, limit).values())
    mean = sum(correct) / limit
    stderr = math.sqrt(sum((c - mean) ** 2 for c in correct) / (limit - 1)) / math.sqrt(limit)
    return mean, stderr


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_stored_accuracy_equals_hand_computed_loglikelihood_choice(store, family):
    loaded = tiny_loaded(family, seed=3)
    limit = 12
    [result] = evaluate(loaded, "sst2", limit=limit, store=store, batch_size=5)
    accuracy, stderr = _hand_sst2_accuracy(loaded, limit)
    assert result.stored.n_examples == limit and not result.reused
    assert result.stored.metric("acc,none") == pytest.approx(accuracy, abs=1e-12)
    assert result.stored.stderr("acc,none") == pytest.approx(stderr, rel=1e-9)
    assert store.get(result.stored.key).metrics == result.stored.metrics
    assert store.outcomes(result.stored.key)["acc"] == _hand_sst2_correct(loaded, limit)


def test_limit_takes_a_seeded_random_sample_shared_by_dense_and_variants(store):
    first, again = runner.sample_indices(872, 20, 7), runner.sample_indices(872, 20, 7)
    assert first == again and len(set(first)) == 20 and first != list(range(20))
    assert runner.sample_indices(872, 20, 8) != first and runner.sample_indices(5, 20, 7) == list(range(5))
    loaded = tiny_loaded("llama", seed=2)
    [dense] = evaluate(loaded, "sst2", limit=6, store=store, sample_seed=7)
    [other_seed] = evaluate(loaded, "sst2", limit=6, store=store, sample_seed=8)
    assert not other_seed.reused  # another seed is another result
    ids = set(store.outcomes(dense.stored.key)["acc"])
    assert ids == set(runner.sample_indices(872, 6, 7))
    assert set(store.outcomes(other_seed.stored.key)["acc"]) == set(runner.sample_indices(872, 6, 8))
    with pytest.raises(UserError, match="sample seed"):
        evaluate(loaded, "sst2", limit=6, store=store, sample_seed=-1)


def test_stored_results_are_reused_never_recomputed(store, monkeypatch):
    loaded = tiny_loaded("llama")
    first = evaluate(loaded, "sst2,rte", limit=4, store=store)
    assert [r.reused for r in first] == [False, False]

    def forbidden(*_args, **_kwargs):
        raise AssertionError("recomputed a stored result")

    monkeypatch.setattr(runner, "run_harness", forbidden)
    monkeypatch.setattr(runner, "prepared_tasks", forbidden)
    again = evaluate(loaded, "rte,sst2", limit=4, store=store)
    assert [r.task for r in again] == ["rte", "sst2"] and all(r.reused for r in again)
    assert again[1].stored.metrics == first[0].stored.metrics
    with pytest.raises(AssertionError, match="recomputed"):  # another limit is another result
        evaluate(loaded, "sst2", limit=5, store=store)


def test_a_failing_task_keeps_the_finished_ones_and_a_rerun_does_the_rest(store, monkeypatch):
    loaded = tiny_loaded("llama")
    real = runner.run_harness
    calls = []

    def fail_on_second(lm, task, manager, limit, bootstrap_iters, sample_seed, num_fewshot=0):
        calls.append(task.task_name)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(lm, task, manager, limit, bootstrap_iters, sample_seed, num_fewshot)

    monkeypatch.setattr(runner, "run_harness", fail_on_second)
    with pytest.raises(RuntimeError):
        evaluate(loaded, "sst2,rte", limit=3, store=store)
    assert [r.key.task for r in store.results()] == ["sst2"]
    monkeypatch.setattr(runner, "run_harness", real)
    results = evaluate(loaded, "sst2,rte", limit=3, store=store)
    assert [r.reused for r in results] == [True, False]


def test_variant_is_evaluated_in_memory_and_the_dense_weights_return(store):
    loaded = tiny_loaded("llama", seed=1)
    dense = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    layer0 = "model.layers.0.mlp.down_proj.weight"
    mask = torch.zeros_like(dense[layer0], dtype=torch.bool)
    mask[:, ::2] = True  # prune every other input column of one projection
    write_variant("toy-variant", {"base_model": loaded.name, "method": "magnitude", "calibration": "none",
                                  "sparsity": "0.5", "seqlen": 0, "nsamples": 0, "seed": 0},
                  masks={layer0: mask})
    [result] = evaluate(loaded, "sst2", variant_id="toy-variant", limit=8, store=store)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, dense[name]), name
    with variant_applied(loaded, "toy-variant"):
        accuracy, _ = _hand_sst2_accuracy(loaded, 8)
    assert result.stored.metric() == pytest.approx(accuracy, abs=1e-12)
    assert result.stored.key.variant_id == "toy-variant"
    [dense] = evaluate(loaded, "sst2", limit=8, store=store)  # same seed and limit: same examples
    assert set(store.outcomes(dense.stored.key)["acc"]) == set(store.outcomes(result.stored.key)["acc"])
    assert store.results(variant_id="toy-variant")[0].variant["method"] == "magnitude"


def test_bad_requests_are_one_line_before_any_work(store):
    loaded = tiny_loaded("llama")
    with pytest.raises(UserError, match="unknown task 'nope'"):
        evaluate(loaded, "sst2,nope", store=store)
    with pytest.raises(UserError, match="positive number"):
        evaluate(loaded, "sst2", limit=0, store=store)
    with pytest.raises(UserError, match="unknown variant"):
        evaluate(loaded, "sst2", variant_id="missing", store=store)
    with pytest.raises(UserError, match="mednli"):
        evaluate(loaded, "sst2,mednli", store=store)
    assert store.count() == 0


def test_cli_evaluate_with_a_user_file_and_offline_errors(store, tiny_model_dir, tmp_path, capsys, monkeypatch):
    model = str(tiny_model_dir("opt"))
    rows = [{"sentence1": "Patient is febrile.", "sentence2": "The patient has a fever", "gold_label": "entailment"},
            {"sentence1": "No chest pain.", "sentence2": "He smokes.", "gold_label": "neutral"}]
    data = tmp_path / "mli_test_v1.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["evaluate", "--model", model, "--tasks", "mednli", "--data", f"mednli={tmp_path}", "--json"]) == 0
    [payload] = json.loads(capsys.readouterr().out)
    assert payload["task"] == "mednli" and payload["n_examples"] == 2 and payload["limit"] is None
    assert payload["data_source"].startswith("file:") and "acc,none" in payload["metrics"]
    assert store.results()[0].key.base_model == model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for argv, message in ((["--tasks", "qqp"], "not available offline"), (["--tasks", "sst2,sst5"], "unknown task"),
                          (["--tasks", "sst2", "--data", "sst2"], "TASK=PATH"),
                          (["--tasks", "sst2", "--variant", "../x"], "invalid variant id")):
        assert main(["evaluate", "--model", model, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert store.count() == 1
