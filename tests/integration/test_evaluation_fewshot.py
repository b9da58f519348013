"""`--num-fewshot` reaches lm-eval: the embedded model on SST-2 with 0 and 2 demonstrations, the
prompts lm-eval logged (log_samples) holding exactly that many solved examples of the split before
the question, and the two results stored under two keys."""

from __future__ import annotations

import pytest

from backend.cli import main
from backend.evaluation import runner
from backend.evaluation.store import DENSE, ResultsStore
from backend.evaluation.tables import build_table

LIMIT = 3
QUESTION = "\nQuestion: Is this sentence positive or negative?\nAnswer:"


@pytest.mark.integration
def test_demonstrations_reach_lm_eval_and_the_key(embedded, isolated_cache, monkeypatch, capsys):
    monkeypatch.delenv("PRUNELENS_EVAL_DATA", raising=False)
    logged: dict[int, list[dict]] = {}
    real_harness = runner.run_harness

    def keep_samples(*args, **kwargs):  # the real run; its logged samples kept for the test
        output = real_harness(*args, **kwargs)
        shots = args[6] if len(args) > 6 else kwargs.get("num_fewshot", 0)
        logged[shots] = output["samples"]["sst2"]
        return output

    monkeypatch.setattr(runner, "run_harness", keep_samples)
    for shots in (0, 2):
        assert main(["evaluate", "--tasks", "sst2", "--limit", str(LIMIT), "--num-fewshot", str(shots)]) == 0
    capsys.readouterr()

    for shots, samples in logged.items():
        assert len(samples) == LIMIT
        for sample in samples:
            contexts = {arguments[0] for arguments in sample["arguments"]}  # one prompt, two answers
            assert len(contexts) == 1
            prompt = contexts.pop()
            assert prompt.count(QUESTION) == shots + 1
            *demonstrations, question = prompt.split(QUESTION)
            assert question == ""  # the prompt ends with the evaluated example's question
            own = sample["doc"]["sentence"]
            assert prompt.endswith(own + QUESTION)
            for demonstration in demonstrations[1:]:  # each later block starts with a solved answer
                assert demonstration.split("\n")[0].strip() in ("positive", "negative")
    assert set(logged) == {0, 2}

    stored = {r.key.num_fewshot: r for r in ResultsStore.from_settings().results(task="sst2")}
    assert set(stored) == {0, 2} and all(r.key.variant_id == DENSE for r in stored.values())
    assert stored[0].key.row()[:-1] == stored[2].key.row()[:-1]  # same examples, only the shots differ
    for shots, result in stored.items():  # each stored accuracy is its own run's per-example mean
        assert result.metric() == sum(s["acc"] for s in logged[shots]) / LIMIT

    # A rerun of the 2-shot evaluation reads it back; the table of 2-shot results holds only it.
    logged.clear()
    assert main(["evaluate", "--tasks", "sst2", "--limit", str(LIMIT), "--num-fewshot", "2"]) == 0
    assert "(stored earlier)" in capsys.readouterr().out and not logged
    for shots in (0, 2):
        table = build_table("task-calibration", ResultsStore.from_settings().results(), num_fewshot=shots)
        assert table.rows == [("sst2", [stored[shots].metric()])]
    assert main(["evaluate", "--tasks", "sst2", "--num-fewshot", "65"]) == 2
    assert "--num-fewshot must be from 0 to 64" in capsys.readouterr().err
