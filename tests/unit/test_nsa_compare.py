"""NSA step 3 and the result JSON, on constructed observations (no model)."""

from __future__ import annotations

import json

import pytest
import torch

from backend.data.encoding import EncodedText
from backend.nsa.assemble import TextRecord, VariantRecord, build_result
from backend.nsa.compare import TextObservation, compare_text, heatmap, weights_removed
from backend.nsa.influential import InfluentialWords, WordLocation
from backend.nsa.schema import SCHEMA_VERSION, validate_result
from backend.nsa.scoring import LayerMass, SelectedNeuron, Selection
from backend.nsa.tasks import get_task

# 4 tokens; selected neurons: k0 (layer 0), k1 (layer 1), k2 (layer 0).
DENSE = torch.tensor([[1.0, 2.0, 0.0], [2.0, -2.0, 0.0], [4.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
PRUNED = torch.tensor([[1.0, 1.0, 0.0], [1.0, -2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 2.0, 1.0]])
INFLUENTIAL = torch.tensor([False, True, True, False])
SCORED = torch.ones(4, dtype=torch.bool)
WORDS = [[1], [2, 3]]
SELECTION = Selection(
    neurons=[SelectedNeuron(0, 7, 0.9, [0.9]), SelectedNeuron(1, 3, 0.8, [0.8]), SelectedNeuron(0, 2, 0.7, [0.7])],
    per_layer={0: [(7, 0.9), (2, 0.7)], 1: [(3, 0.8)]},
)
DENSE_MASS = {0: LayerMass(torch.tensor([10.0, 10, 10, 10]), torch.tensor([7.0, 9.0])),
              1: LayerMass(torch.tensor([2.0, 2, 2, 2]), torch.tensor([1.0, 4.0]))}
PRUNED_MASS = {0: LayerMass(torch.tensor([5.0, 8, 4, 5]), torch.tensor([7.0, 3.0])),
               1: LayerMass(torch.tensor([2.0, 1, 1, 2]), torch.tensor([1.0, 2.0]))}


def test_drops_and_baselines_equal_hand_computation():
    result = compare_text(TextObservation(DENSE, DENSE_MASS), TextObservation(PRUNED, PRUNED_MASS),
                          SELECTION, INFLUENTIAL, SCORED, WORDS)
    # Influential tokens 1-2: dense |a| 6, 3, 1 ; pruned 3, 2, 1.
    assert [n["drop_influential"] for n in result["neurons"]] == pytest.approx([1 - 3 / 6, 1 - 2 / 3, 0.0])
    assert result["drop_influential"] == pytest.approx(1 - 6 / 10)
    # Other tokens 0, 3: dense 1, 3, 1 ; pruned 1, 3, 1.
    assert [n["drop_non_influential"] for n in result["neurons"]] == pytest.approx([0.0, 0.0, 0.0])
    assert result["baseline_non_influential"] == pytest.approx(0.0)
    # Layer 0 on tokens 1-2: 1 - 12/20 ; layer 1: 1 - 2/4 ; weights 2 (k0, k2) and 1 (k1).
    assert [n["layer_baseline"] for n in result["neurons"]] == pytest.approx([0.4, 0.5, 0.4])
    assert result["baseline_all_neurons"] == pytest.approx((2 * 0.4 + 0.5) / 3)
    assert result["excess_drop"] == pytest.approx(0.4 - (2 * 0.4 + 0.5) / 3)
    # Words: activation = max over the word's tokens. word 0 = token 1, word 1 = tokens 2-3.
    assert result["neurons"][0]["word_drops"] == pytest.approx([1 - 1 / 2, 1 - 2 / 4])
    assert result["neurons"][1]["word_drops"] == pytest.approx([1 - 2 / 2, 1 - 2 / 1])
    assert [w["drop"] for w in result["words"]] == pytest.approx([1 - 3 / 4, 1 - 5 / 6])
    assert [w["baseline_all_neurons"] for w in result["words"]] == pytest.approx(
        [(2 * 0.0 + 0.0) / 3, (2 * (1 - 3 / 9) + (1 - 2 / 4)) / 3])


def test_drop_is_zero_when_the_variant_is_the_dense_model():
    dense = TextObservation(DENSE, DENSE_MASS)
    result = compare_text(dense, TextObservation(DENSE.clone(), DENSE_MASS), SELECTION, INFLUENTIAL, SCORED, WORDS)
    for key in ("drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop"):
        assert result[key] == 0.0
    drops = [d for n in result["neurons"] for d in n["word_drops"]]
    assert drops.count(None) == 1  # k2 is silent on word 0 in the dense model
    assert all(d == 0.0 for d in drops if d is not None)


def test_silent_dense_neuron_gives_none_not_a_division_by_zero():
    dense = DENSE.clone()
    dense[:, 2] = 0.0
    result = compare_text(TextObservation(dense, DENSE_MASS), TextObservation(PRUNED, PRUNED_MASS),
                          SELECTION, INFLUENTIAL, SCORED, WORDS)
    assert result["neurons"][2]["drop_influential"] is None
    assert result["drop_influential"] == pytest.approx(1 - (3 + 2 + 1) / (6 + 3 + 0))


def test_weights_removed_counts_only_weights_pruning_zeroed():
    dense = [{"inputs": torch.tensor([1.0, 0.0, 2.0, 3.0]), "output": torch.tensor([1.0, 1.0])}]
    pruned = [{"inputs": torch.tensor([0.0, 0.0, 0.0, 3.0]), "output": torch.tensor([1.0, 0.0])}]
    (row,) = weights_removed(dense, pruned)
    # Already-zero dense weights are not "removed"; SparseGPT-style updates are not either.
    assert row == {"fraction": 3 / 6, "inputs": 2 / 4, "output": 1 / 2}


def test_heatmap_scale_is_the_dense_max_over_real_tokens():
    scored = torch.tensor([False, True, True, True])
    dense = DENSE.clone()
    dense[0, 0] = 100.0  # a special token's value must not set the scale
    payload = heatmap(["<s>", "a", "b", "c"], [(0, 0), (0, 1), (1, 2), (2, 3)], SELECTION,
                      TextObservation(dense, DENSE_MASS), {"v1": TextObservation(PRUNED, PRUNED_MASS)}, scored)
    assert [n["scale"] for n in payload["neurons"]] == [4.0, 2.0, 1.0]
    assert payload["neurons"][1]["dense"] == [2.0, -2.0, 1.0, 1.0]  # signed
    assert payload["neurons"][1]["variants"]["v1"] == [1.0, -2.0, 0.0, 2.0]
    assert payload["offsets"][1] == [0, 1]


def _record() -> TextRecord:
    text = "xx slow yy great"
    encoded = EncodedText(text, [1, 2, 3, 4], ["xx", " slow", " yy", " great"],
                          [(0, 2), (2, 7), (7, 10), (10, 16)], False)
    words = InfluentialWords("user", [WordLocation("slow", [(3, 7)], [1]), WordLocation("great", [(11, 16)], [3])])
    return TextRecord(encoded, words, label="positive", eligible_neurons=12)


def test_build_result_is_complete_and_validates():
    record = _record()
    influential = torch.tensor([False, True, False, True])
    dense = TextObservation(DENSE, DENSE_MASS)
    variant = VariantRecord(
        {"id": "v1", "base_model": "m", "method": "wanda", "calibration": "c4", "sparsity": "0.5",
         "achieved_sparsity": 0.5},
        [TextObservation(PRUNED, PRUNED_MASS)],
        [{"fraction": 0.5, "inputs": 0.5, "output": 0.5}] * 3,
    )
    result = build_result(
        model={"name": "m", "family": "llama", "layers": 2, "neurons_per_layer": 8},
        task=get_task("sentiment"), settings={"top_k": 3, "activation": "abs"}, texts=[record],
        selection=SELECTION, dense=[dense], variants=[variant], warnings=["w"], timings={"total": 1.0},
    )
    parsed = validate_result(json.loads(json.dumps(result)))
    assert parsed.schema_version == SCHEMA_VERSION and result["kind"] == "prunelens.nsa"
    assert [(n["rank"], n["layer"], n["index"]) for n in result["neurons"]] == [(1, 0, 7), (2, 1, 3), (3, 0, 2)]
    # Neuron k1 fires 2 on " slow" (token 1) and 1 on " great" (token 3): slow first.
    assert [(w["word"], w["activation"]) for w in result["neurons"][1]["attributed_words"]] == [
        ("slow", 2.0), ("great", 1.0)]
    expected = compare_text(dense, variant.observations[0], SELECTION, influential, record.scored,
                            record.word_tokens)
    block = result["comparison"][0]
    assert block["variant"] == "v1"
    assert block["aggregate"]["drop_influential"] == pytest.approx(expected["drop_influential"])
    assert block["texts"][0]["words"][1] == {"word": "great", **expected["words"][1]}
    assert result["neurons"][0]["variants"]["v1"]["drop_influential"] == pytest.approx(
        expected["neurons"][0]["drop_influential"])
    assert result["heatmaps"][0]["tokens"] == record.encoded.tokens
    assert result["texts"][0]["influential"]["words"][0] == {"word": "slow", "spans": [[3, 7]], "tokens": [1]}
    assert result["per_layer_top"][1] == {"layer": 1, "neurons": [{"index": 3, "score": 0.8}]}
