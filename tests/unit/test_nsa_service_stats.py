"""NSA statistics end to end on a tiny model: held-out next to in-sample, per-text words, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from backend.cli import main
from backend.nsa.schema import validate_result
from backend.nsa.service import attribute
from backend.nsa.stats import NOT_DISTINGUISHABLE
from backend.nsa.word_check import without_spans
from backend.pruning.variants import write_variant
from tests.conftest import tiny_loaded

ROWS = [
    {"text": "The movie was painfully slow, but the acting was beautiful.", "words": ["slow", "beautiful"]},
    {"text": "A delightful, warm and funny film that never drags.", "words": ["delightful", "funny"]},
    {"text": "Pruning removes weights; calibration data decides which ones.", "words": ["removes"]},
    {"text": "If all cats are animals and Tom is a cat, then Tom is an animal.", "words": ["cats", "animal"]},
    {"text": "Question: what color is the sky? Answer: blue.", "words": ["blue"]},
]


def _variant(loaded, name: str, share: float) -> None:
    """A hand variant: the first ``share`` of every up_proj's rows pruned (LLaMA layout)."""
    masks = {}
    for layer in range(len(loaded.adapter.decoder_layers(loaded.model))):
        mask = torch.zeros(64, 32, dtype=torch.bool)
        mask[: int(64 * share)] = True
        masks[f"model.layers.{layer}.mlp.up_proj.weight"] = mask
    write_variant(name, {"base_model": loaded.name, "method": "hand", "calibration": None, "sparsity": "hand",
                         "achieved_sparsity": {"overall": share, "per_linear": {}}}, masks=masks)


def test_statistics_sit_next_to_step3_and_agree_with_it(isolated_cache):
    loaded = tiny_loaded("llama")
    _variant(loaded, "half", 0.5)
    result = attribute(loaded, ROWS, variants=["half"], top_k=6, null_draws=40, resamples=300, seed=3)
    validate_result(json.loads(json.dumps(result)))
    assert [t["influential"]["source"] for t in result["texts"]] == ["user"] * 5  # the rows' own words
    (block,) = result["comparison"]
    stats = block["statistics"]
    # The sums-based in-sample figures are step 3's figures, text by text.
    for name in ("drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop"):
        expected = [row[name] for row in block["texts"]]
        assert stats["per_text"]["in_sample"][name] == pytest.approx(expected, rel=1e-5, abs=1e-7)
        assert stats["in_sample"][name]["mean"] == pytest.approx(block["aggregate"][name], rel=1e-6)
    # Cross-fitted: two folds partition the texts; one held-out value per text.
    folds = result["statistics"]["folds"]
    assert sorted(folds[0] + folds[1]) == list(range(5)) and {len(f) for f in folds} == {2, 3}
    held = stats["held_out"]
    assert held is not None and held["excess_drop"]["n"] == 5
    assert held["excess_drop"]["low"] <= held["excess_drop"]["mean"] <= held["excess_drop"]["high"]
    assert held["null"]["draws"] == 40 and 0 < held["null"]["p_value"] <= 1
    assert stats["words"]["in_sample"][0]["word"] == "slow"
    # Specificity and the step-1 check come with every neuron and word.
    assert all(n["specificity"]["percentile"] is not None for n in result["neurons"])
    checks = [w for t in result["texts"] for w in t["influential"]["words"]]
    assert all(isinstance(w["margin_change"], float) and isinstance(w["no_effect"], bool) for w in checks)
    # Same seed: the same numbers.
    again = attribute(loaded, ROWS, variants=["half"], top_k=6, null_draws=40, resamples=300, seed=3)
    assert again["comparison"][0]["statistics"] == stats


def test_identity_variant_is_not_distinguishable_and_few_texts_say_why(isolated_cache):
    loaded = tiny_loaded("llama")
    _variant(loaded, "none", 0.0)
    result = attribute(loaded, ROWS[:3], variants=["none"], top_k=4, null_draws=20, resamples=200)
    stats = result["comparison"][0]["statistics"]
    assert stats["held_out"] is None and "at least 4 texts" in stats["held_out_note"]
    assert stats["in_sample"]["excess_drop"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 3}
    assert stats["in_sample"]["verdict"] == NOT_DISTINGUISHABLE
    off = attribute(loaded, ROWS[:3], variants=["none"], top_k=4, split=False, null_draws=0, resamples=0)
    assert off["comparison"][0]["statistics"] is None and off["statistics"] is None
    assert off["comparison"][0]["aggregate"] == result["comparison"][0]["aggregate"]


def test_cli_jsonl_words_and_no_split(tiny_model_dir, tmp_path, capsys):
    model_dir = str(tiny_model_dir("llama"))
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    out = tmp_path / "nsa.json"
    assert main(["attribute", "--model", model_dir, "--file", str(jsonl), "--top-k", "3", "--no-split",
                 "--null-draws", "10", "--json", str(out)]) == 0
    payload = json.loads(out.read_text())
    assert [[w["word"] for w in t["influential"]["words"]] for t in payload["texts"]] == [r["words"] for r in ROWS]
    assert payload["settings"]["split"] is False
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "Warm and funny.", "words": "funny"}) + "\n")
    capsys.readouterr()
    assert main(["attribute", "--model", model_dir, "--file", str(bad)]) == 2
    assert "must be a list of strings" in capsys.readouterr().err


def test_occluding_a_word_removes_every_occurrence():
    text = "slow, slow and beautiful"
    assert without_spans(text, [(0, 4), (6, 10)]) == ", and beautiful"
    assert without_spans(text, [(15, 24)]) == "slow, slow and"
