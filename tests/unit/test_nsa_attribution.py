"""NSA step-1 fallback attribution: Captum's integrated gradients against truths computed here."""

from __future__ import annotations

import pytest
import torch

from backend.errors import UserError
from backend.nsa.attribution import (
    FALLBACK_METHOD,
    baseline_token_id,
    text_token_indices,
    token_attribution,
)
from backend.nsa.influential import fallback_scores, tokens_for_span
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import get_task
from tests.conftest import tiny_loaded

SENTIMENT = get_task("sentiment")
TEXT = "The movie was painfully slow, but the acting was beautiful and slow."
# A Rotten Tomatoes snippet (gold label negative), the first of bench/step1_words.py's draw with seed 123.
EMBEDDED_TEXT = ("what might have been acceptable on the printed page of iles' book does not translate "
                 "well to the screen .")


@pytest.fixture(scope="module")
def gpt2_double():
    # GPT-2 in float64 is float64 throughout (LLaMA's RMSNorm computes in float32).
    loaded = tiny_loaded("gpt2")
    loaded.model.double()
    return loaded


def _margin_of_ids(loaded, probe, ids: list[int], label_index: int) -> float:
    """The label margin of the probe run on ``ids`` (same prompt, tokens possibly replaced)."""
    with torch.no_grad():
        embeds = loaded.model.get_input_embeddings()(torch.tensor([ids]))  # [1, tokens, hidden]
        return float(margin(label_log_probs(loaded.model, probe, embeds=embeds), label_index)[0])


def test_integrated_gradients_completeness_against_brute_force_margins(gpt2_double):
    loaded = gpt2_double
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)
    result = token_attribution(loaded, probe, len(TEXT), 0, method="integrated_gradients", n_steps=64)
    # The baseline, built here from ids: every token of the text replaced by the pad token.
    text_tokens = text_token_indices(probe, len(TEXT))
    pad = baseline_token_id(loaded.tokenizer)
    assert pad == loaded.tokenizer.pad_token_id
    baseline_ids = [pad if i in text_tokens else t for i, t in enumerate(probe.input_ids)]
    full, base = _margin_of_ids(loaded, probe, probe.input_ids, 0), _margin_of_ids(loaded, probe, baseline_ids, 0)
    assert result.margin == pytest.approx(full, abs=1e-9)
    assert result.baseline_margin == pytest.approx(base, abs=1e-9)
    assert abs(full - base) > 1e-3  # the check below is not trivially 0 = 0
    total = float(result.values.sum())
    # Completeness up to the convergence delta Captum reports (Captum sums in float32: 1e-6), and
    # that delta is small.
    assert total - (full - base) == pytest.approx(result.convergence_delta, abs=1e-6)
    assert abs(result.convergence_delta) < 1e-3 * abs(full - base)
    # Tokens outside the text are equal in input and baseline: exactly no attribution.
    outside = [i for i in range(len(probe.input_ids)) if i not in text_tokens]
    assert outside and torch.all(result.values[outside] == 0)
    assert all(p.grad is None for p in loaded.model.parameters())  # shared model left clean


def test_integrated_gradients_converge_with_more_steps(gpt2_double):
    loaded = gpt2_double
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)
    coarse = token_attribution(loaded, probe, len(TEXT), 1, n_steps=2)
    fine = token_attribution(loaded, probe, len(TEXT), 1, n_steps=64)
    assert abs(fine.convergence_delta) < abs(coarse.convergence_delta)


def test_word_attribution_is_the_sum_over_its_tokens(gpt2_double):
    loaded = gpt2_double
    ranked, attributed = fallback_scores(loaded, TEXT, SENTIMENT, 0)
    assert attributed.method == FALLBACK_METHOD == "integrated_gradients"
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)

    def occurrence(start: int, word: str) -> float:
        span = (probe.text_start + start, probe.text_start + start + len(word))
        return float(attributed.values[tokens_for_span(probe.encoded.offsets, span)].sum())

    acting = next(row for row in ranked if row["word"] == "acting")
    assert acting["attribution"] == pytest.approx(occurrence(TEXT.index("acting"), "acting"), abs=1e-12)
    # "slow" occurs twice: the occurrence with the larger magnitude speaks for the word.
    first, second = occurrence(TEXT.index("slow"), "slow"), occurrence(TEXT.rindex("slow"), "slow")
    slow = next(row for row in ranked if row["word"] == "slow")
    assert slow["attribution"] == pytest.approx(max(first, second, key=abs), abs=1e-12)
    assert slow["score"] == pytest.approx(abs(slow["attribution"]), abs=1e-12)
    assert [row["score"] for row in ranked] == sorted((row["score"] for row in ranked), reverse=True)
    assert not {"the", "was", "but", "and", "movie"} & {row["word"].lower() for row in ranked}


def test_attribution_is_deterministic():
    loaded = tiny_loaded("llama")
    first, a = fallback_scores(loaded, TEXT, SENTIMENT)
    second, b = fallback_scores(loaded, TEXT, SENTIMENT)
    assert first == second and torch.equal(a.values, b.values)
    assert a.label_index == b.label_index  # without a gold label the prediction is explained, both times


def test_gradient_x_input_stays_selectable(gpt2_double):
    loaded = gpt2_double
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)
    old = token_attribution(loaded, probe, len(TEXT), 0, method="gradient_x_input")
    assert old.method == "gradient_x_input" and old.convergence_delta is None and old.baseline_margin is None
    with pytest.raises(UserError, match="unknown fallback attribution"):
        token_attribution(loaded, probe, len(TEXT), 0, method="saliency")


@pytest.mark.integration
def test_integrated_gradients_complete_on_the_embedded_model(embedded):
    # A held-out-style Rotten Tomatoes snippet on which 32 Gauss-Legendre points left a
    # convergence delta 3.5x the margin change (the margin oscillates along the path).
    text = EMBEDDED_TEXT
    probe = encode_probe(embedded.tokenizer, text, SENTIMENT, embedded.max_length)
    with torch.no_grad():  # the plain forward on ids, as the product runs the model
        logits = embedded.model(input_ids=torch.tensor([probe.input_ids])).logits[0, -1].float()
    plain = logits.log_softmax(-1)[[ids[0] for ids in probe.label_ids]]
    result = token_attribution(embedded, probe, len(text), 1)
    coarse = token_attribution(embedded, probe, len(text), 1, n_steps=32)
    # The forward Captum differentiates (embeds=) is the model's own forward at alpha = 1.
    assert result.margin == pytest.approx(float(plain[1] - plain[0]), abs=1e-4)
    change = result.margin - result.baseline_margin
    assert abs(change) > 0.1
    assert float(result.values.sum()) - change == pytest.approx(result.convergence_delta, abs=1e-4)
    assert abs(result.convergence_delta) < 0.1 * abs(change)  # completeness at the default steps
    assert abs(coarse.convergence_delta) > abs(result.convergence_delta)
