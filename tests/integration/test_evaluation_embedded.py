"""Our numbers are lm-eval's: SmolLM2 (embedded) on SST-2, through `prunelens evaluate` and the store,
against lm_eval.simple_evaluate run directly on the same seeded sample of examples; per-example scores
whose mean is the stored accuracy; then a variant evaluated in memory and paired with the dense model."""

from __future__ import annotations

import pytest
import torch

from backend.cli import main
from backend.evaluation.registry import TASKS
from backend.evaluation.runner import DEFAULT_SAMPLE_SEED, evaluate, sample_indices
from backend.evaluation.store import DENSE, ResultsStore

LIMIT = 40


def _direct_lm_eval_sst2(loaded, indices: list[int]) -> dict:
    """lm-eval on its own on the examples ``indices``: its sst2 YAML, read by its loader, with the
    dataset pointed at the same packaged arrow file through plain `datasets.load_dataset("arrow",
    ...)` - none of our code."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(TASKS["sst2"].config_path())
    arrow = next(TASKS["sst2"].packaged.path().glob("*.arrow"))
    config |= {"dataset_path": "arrow", "dataset_name": None, "training_split": None,
               "dataset_kwargs": {"data_files": {"validation": str(arrow)}}}
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=16)
    output = lm_eval.simple_evaluate(model=lm, tasks=[config], samples={"sst2": indices}, log_samples=False,
                                     task_manager=TaskManager(include_defaults=False))
    return output["results"]["sst2"] | {"n": output["n-samples"]["sst2"]["effective"]}


@pytest.mark.integration
def test_stored_sst2_accuracy_equals_lm_eval_run_directly(embedded, isolated_cache, capsys, monkeypatch):
    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    assert main(["evaluate", "--tasks", "sst2", "--limit", str(LIMIT)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("sst2\tacc,none=") and f"n={LIMIT}" in line

    stored = ResultsStore.from_settings().results(task="sst2")
    assert len(stored) == 1 and stored[0].key.variant_id == DENSE and stored[0].n_examples == LIMIT
    indices = sample_indices(872, LIMIT, DEFAULT_SAMPLE_SEED)
    assert indices != list(range(LIMIT))  # a random sample, not the first rows
    direct = _direct_lm_eval_sst2(embedded, indices)
    assert direct["n"] == LIMIT
    assert stored[0].metrics["acc,none"] == direct["acc,none"]
    assert stored[0].metrics["acc_stderr,none"] == direct["acc_stderr,none"]
    assert f"acc,none={direct['acc,none']:.4f}" in line
    correct = ResultsStore.from_settings().outcomes(stored[0].key)["acc"]
    assert sorted(correct) == indices and set(correct.values()) <= {0.0, 1.0}
    assert sum(correct.values()) / LIMIT == stored[0].metrics["acc,none"]  # exactly

    assert main(["evaluate", "--tasks", "sst2", "--limit", str(LIMIT)]) == 0  # reused, not recomputed
    assert "(stored earlier)" in capsys.readouterr().out


@pytest.mark.integration
def test_variant_evaluated_in_memory_without_a_checkpoint(embedded, isolated_cache, monkeypatch):
    from backend.evaluation import runner
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec

    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    probe = "model.layers.3.mlp.down_proj.weight"
    dense_probe = embedded.model.state_dict()[probe].clone()
    variant = create_variant(embedded, PruneConfig(method="magnitude", spec=SparsitySpec.parse("0.7"),
                                                   nsamples=1, seqlen=64))
    zeros_seen = []  # fraction of zero weights in the probe while lm-eval scores
    real_run_harness = runner.run_harness

    def watching(lm, *args):
        zeros_seen.append(float((lm.model.state_dict()[probe] == 0).float().mean()))
        return real_run_harness(lm, *args)

    monkeypatch.setattr(runner, "run_harness", watching)
    store = ResultsStore.from_settings()
    dense, pruned = (evaluate(embedded, "sst2", variant_id=v, limit=20, store=store)[0]
                     for v in (None, variant.variant_id))
    assert zeros_seen[0] < 0.01 and zeros_seen[1] == pytest.approx(0.7, abs=0.01)
    assert torch.equal(embedded.model.state_dict()[probe], dense_probe)  # dense weights are back
    assert dense.stored.key.variant_id == DENSE and pruned.stored.key.variant_id == variant.variant_id
    assert pruned.stored.variant["method"] == "magnitude" and pruned.stored.variant["sparsity"] == "0.7"
    # Same seed and limit: the same 20 examples, paired one by one.
    dense_correct, pruned_correct = (store.outcomes(r.stored.key)["acc"] for r in (dense, pruned))
    assert sorted(dense_correct) == sorted(pruned_correct) == sample_indices(872, 20, DEFAULT_SAMPLE_SEED)
    from backend.evaluation.paired import compare_to_dense

    [row] = compare_to_dense(store, embedded.name, variant.variant_id)
    difference = row["difference"]
    assert difference["difference"] == pytest.approx(pruned.stored.metric() - dense.stored.metric(), abs=1e-12)
    assert difference["worse"] == sum(dense_correct[d] > pruned_correct[d] for d in dense_correct)
    assert difference["better"] == sum(dense_correct[d] < pruned_correct[d] for d in dense_correct)
    assert difference["distinguishable"] == (not difference["low"] <= 0 <= difference["high"])
    overlay = isolated_cache.variants_dir / variant.variant_id
    assert sum(f.stat().st_size for f in overlay.iterdir()) < 40e6  # masks only, no 513 MB checkpoint
