"""Cross-fitted causal checks: the planted case, folds, statistics and the verdict's wording."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pytest
import torch

from backend.errors import UserError
from backend.models.adapters import weight_matrix
from backend.nsa.causal import FoldSelection, causal_check, crossfit_selections, two_folds
from backend.nsa.patching import dense_run
from backend.nsa.probe import encode_probe
from backend.nsa.tasks import get_task
from backend.nsa.verdict import (
    ablation_reading,
    ablation_summary,
    patching_reading,
    recovery_summary,
)
from tests.conftest import TINY_CORPUS, tiny_loaded

SENTIMENT = get_task("sentiment")
TEXTS = [f"{a} {b}" for a in TINY_CORPUS for b in TINY_CORPUS[:2]]  # 12 examples


def _planted(loaded, known: torch.Tensor):
    """A 'variant' that differs from the dense model only by zeroing the ``known`` neurons."""
    width = loaded.adapter.neuron_count(loaded.model)
    variant = copy.deepcopy(loaded.model)
    with torch.no_grad():
        for flat in known.tolist():
            layer, index = divmod(flat, width)
            for module in loaded.adapter.neuron_input_modules(loaded.adapter.decoder_layers(variant)[layer]):
                weight_matrix(module)[index] = 0.0
                if getattr(module, "bias", None) is not None:
                    module.bias[index] = 0.0
    return variant


def _setup(family: str):
    loaded = tiny_loaded(family, layers=2)
    width = loaded.adapter.neuron_count(loaded.model)
    probes = [encode_probe(loaded.tokenizer, text, SENTIMENT, loaded.max_length) for text in TEXTS]
    runs = [dense_run(loaded.model, loaded.adapter, probe, 0, []) for probe in probes]
    labels = [int(run.log_probs.argmax()) for run in runs]  # the dense model is right on every one
    levels = torch.stack([run.levels for run in runs]).mean(0)  # [layers, neurons]
    return loaded, width, probes, labels, levels


@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_planted_neurons_recover_everything_and_random_ones_nothing(family):
    loaded, width, probes, labels, levels = _setup(family)
    last = 1
    # The 4 strongest neurons of the last layer: zeroing them must cost margin somewhere.
    known = last * width + levels[last].argsort(descending=True)[:4]
    variant = _planted(loaded, known)
    folds = [FoldSelection(test=fold, selected=known) for fold in two_folds(len(probes), 0)]
    result = causal_check(loaded.model, loaded.adapter, probes, labels, folds,
                          variants=[("planted", lambda: contextlib.nullcontext(variant))], draws=20)
    patching = result["patching"][0]
    assert patching["examples_lost_margin"] >= 2
    assert patching["recovery"]["value"] >= 0.99
    assert patching["recovery"]["interval"][0] >= 0.99
    # The other neurons of the last layer are the same in the planted variant: patching them
    # gives back nothing.
    assert abs(patching["random"]["value"]) < 1e-4
    assert patching["p_value"] == pytest.approx(1 / 21)
    assert "more than random neurons" in patching["reading"]
    assert "not distinguishable" not in patching["reading"]
    accuracy = patching["accuracy"]
    assert accuracy["dense"]["value"] == 1.0 and accuracy["patched"]["value"] == 1.0
    assert accuracy["random"]["value"] == pytest.approx(accuracy["variant"]["value"], abs=1e-9)
    # Ablation in the dense model zeroes the same neurons the variant zeroed: same margins.
    assert result["ablation"]["examples"] == len(probes)
    assert result["ablation"]["accuracy"]["ablated"]["value"] == pytest.approx(accuracy["variant"]["value"])


def test_unaffected_neurons_are_not_distinguishable_from_random():
    loaded, width, probes, labels, levels = _setup("llama")
    ranked = levels[1].argsort(descending=True)
    variant = _planted(loaded, width + ranked[:4])
    innocent = width + ranked[-6:-2]  # weak last-layer neurons the variant did not touch
    folds = [FoldSelection(test=fold, selected=innocent) for fold in two_folds(len(probes), 0)]
    result = causal_check(loaded.model, loaded.adapter, probes, labels, folds, ablate=False,
                          variants=[("planted", lambda: contextlib.nullcontext(variant))], draws=20)
    patching = result["patching"][0]
    assert abs(patching["recovery"]["value"]) < 1e-4
    assert "not distinguishable from random neurons" in patching["reading"]
    assert result["ablation"] is None


def test_two_folds_is_a_seeded_partition():
    folds = two_folds(11, seed=3)
    assert sorted(folds[0] + folds[1]) == list(range(11))
    assert sorted(len(f) for f in folds) == [5, 6]
    assert folds == two_folds(11, seed=3) and folds != two_folds(11, seed=4)
    with pytest.raises(UserError, match="at least 2"):
        two_folds(1)


def test_crossfit_selection_uses_only_the_other_folds_texts():
    # Text i's scores put all weight on neuron i of layer 0: each fold's selection is exactly
    # the other fold's texts' neurons.
    scores = [{0: torch.nn.functional.one_hot(torch.tensor(i), 8).float(), 1: torch.zeros(8)} for i in range(6)]
    plans = crossfit_selections(scores, top_k=3, neurons_per_layer=8, seed=0)
    for plan, other in zip(plans, reversed(plans), strict=True):
        assert sorted(plan.selected.tolist()) == other.test
        assert not set(plan.selected.tolist()) & set(plan.test)


def test_recovery_is_a_ratio_of_sums_over_examples_that_lost_margin():
    dense = np.array([2.0, 1.0, 3.0, 0.5])
    variant = np.array([0.0, -1.0, 3.5, 0.5])  # examples 2 and 3 lost nothing
    selected = np.array([1.0, 0.0, 0.0, 9.0])
    draws = np.array([[0.0, 0.5], [-1.0, -1.0], [3.5, 3.5], [0.5, 0.5]])
    summary = recovery_summary(dense, variant, selected, dense.copy(), draws, seed=0)
    assert summary["examples_lost_margin"] == 2
    assert summary["recovery"]["value"] == pytest.approx((1.0 + 1.0) / (2.0 + 2.0))
    assert summary["random"]["value"] == pytest.approx(0.25 / 4.0)
    assert summary["all_layers"]["value"] == pytest.approx(1.0)
    assert summary["per_example_recovery"] == [0.5, 0.5, None, None]
    assert summary["null_draw_recovery"] == pytest.approx([0.0, 0.5 / 4.0])
    assert summary["p_value"] == pytest.approx(1 / 3)
    low, high = summary["recovery"]["interval"]
    assert low <= 0.5 <= high
    assert summary == recovery_summary(dense, variant, selected, dense.copy(), draws, seed=0)  # seeded
    assert summary["accuracy"]["variant"]["value"] == pytest.approx(0.5)


def test_no_lost_margin_says_there_is_nothing_to_recover():
    margins = np.array([1.0, 2.0])
    summary = recovery_summary(margins, margins + 1, margins, margins, np.stack([margins] * 3, 1))
    assert summary["recovery"] is None
    assert "nothing for patching to recover" in patching_reading(summary, 5)


def test_bootstrap_interval_covers_a_known_mean():
    # 200 normal effects with mean 0.3: the 95% interval of their mean must hold 0.3 and be
    # about 2 x 1.96 x sigma / sqrt(n) wide.
    rng = np.random.default_rng(0)
    effects = rng.normal(0.3, 1.0, 200)
    draws = rng.normal(0.0, 0.1, (200, 20))
    summary = ablation_summary(effects + draws.mean(1) * 0, np.zeros(200), draws * 0 + 0.3 - draws, seed=1)
    low, high = summary["effect"]["interval"]
    assert low < effects.mean() < high
    assert high - low == pytest.approx(2 * 1.96 / np.sqrt(200), rel=0.2)
    assert "change" in ablation_reading(summary, 20)


def test_attribute_with_patch_reports_progress_in_order_and_needs_labels(isolated_cache):
    from backend.nsa.schema import validate_result
    from backend.nsa.service import attribute
    from backend.pruning.variants import write_variant

    loaded = tiny_loaded("llama")
    mask = torch.zeros(64, 32, dtype=torch.bool)
    mask[:16] = True  # the first 16 neurons of layer 1 lose their up projection
    write_variant("hand-v", {"base_model": loaded.name, "method": "hand", "calibration": None, "sparsity": "hand",
                             "achieved_sparsity": {"overall": 0.0, "per_linear": {}}},
                  masks={"model.layers.1.mlp.up_proj.weight": mask})
    texts = [{"text": text, "label_text": ("positive", "negative")[i % 2]} for i, text in enumerate(TEXTS[:6])]
    events = []
    result = attribute(loaded, texts, words=["film", "movie", "slow", "warm", "sky", "cats"], variants=["hand-v"],
                       top_k=4, patch=True, progress=lambda fraction, message: events.append((fraction, message)))
    fractions = [fraction for fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(message.startswith("patching in hand-v") for fraction, message in events if fraction >= 0.5)
    validate_result(result)
    causal = result["causal"]
    assert causal["label_source"] == "gold" and causal["ablation"] is None
    assert causal["patching"][0]["variant"] == "hand-v" and causal["patching"][0]["examples"] == 6
    assert [row["check"] for row in causal["verdict"]] == ["patching"]
    # One split: the causal check tests on the same two folds the held-out statistics use.
    statistics_folds = sorted(sorted(fold) for fold in result["statistics"]["folds"])
    assert sorted(fold["test_examples"] for fold in causal["folds"]) == statistics_folds
    # The verdict card carries the variant's held-out excess drop, and the static figure draws it.
    from frontend.views import static_figures, verdict_view
    from frontend.views.nsa_stats import interval_text
    from tests.unit.test_static_figures import svg_texts

    held = result["comparison"][0]["statistics"]["held_out"]
    card = verdict_view.verdict_cards(result)[0]
    assert card["lines"][-1] == (f"Held-out excess activation drop (NSA statistics): "
                                 f"{interval_text(held['excess_drop'])} \u2014 {held['verdict']}")
    drawn = svg_texts(static_figures.figure_bytes(static_figures.verdict_card_static(card), "svg"))
    assert "Held-out excess activation drop" in drawn and "Patching in hand-v" in drawn
    with pytest.raises(UserError, match="needs a label for every text"):
        attribute(loaded, [*texts, {"text": TEXTS[7]}], words=["film"], variants=["hand-v"], patch=True)
    with pytest.raises(UserError, match="at least one variant"):
        attribute(loaded, texts, words=["film"], patch=True)
