"""NSA step 1: parsing messy generations, mapping words to tokens, the fallback's sources.

Integrated gradients (the default fallback) is tested in test_nsa_attribution.py."""

from __future__ import annotations

import pytest
import torch

import backend.nsa.influential as influential_module
from backend.data.encoding import encode_text
from backend.nsa.influential import (
    FALLBACK_METHOD,
    fallback_scores,
    find_word_spans,
    influential_words,
    locate_words,
    parse_generation,
)
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import get_task
from tests.conftest import build_tiny_tokenizer, tiny_loaded

SENTIMENT = get_task("sentiment")
TEXT = "The movie was painfully slow, but the acting was beautiful."

# (what the model wrote, the text, the words that must come out, rejection reasons expected)
MESSY_GENERATIONS = [
    ("Words: [slow,beautiful]", TEXT, ["slow", "beautiful"], set()),
    ('Reasoning: sure.\nWords: ["painfully", \'slow\', “beautiful”]', TEXT,
     ["painfully", "slow", "beautiful"], set()),
    ("1. slow\n2) beautiful\n3. acting", TEXT, ["slow", "beautiful", "acting"], set()),
    ("- Slow\n* BEAUTIFUL", TEXT, ["slow", "beautiful"], set()),
    ("[word1,word2,...]", TEXT, [], {"placeholder"}),
    ("Words: [dull,predictable,gorgeous]", TEXT, [], {"worked-example echo"}),
    ("[word1, word2] then [slow]", TEXT, ["slow"], {"placeholder"}),
    ("but, but, but, but, but", TEXT, [], {"repetition loop"}),
    ("[slow, slow, slow, beautiful]", TEXT, ["beautiful"], {"repetition loop"}),
    ("[the, was, but]", TEXT, [], {"stopword"}),
    ("", TEXT, [], set()),
    ("   \n ", TEXT, [], set()),
    (TEXT, TEXT, [], {"long phrase (copied text)"}),
    ("Reasoning: blah\nWords: [painfully, beautif", TEXT, ["painfully"], {"not in text"}),
    ('Reasoning: "charming" and "affect" are positive', "A charming and affecting journey.",
     ["charming"], {"not in text"}),
    ("[painfully slow, the acting]", TEXT, ["painfully slow", "acting"], set()),
    ("[slow and beautiful]", TEXT, ["slow", "beautiful"], set()),
    ("[slower, slowly]", TEXT, [], {"not in text"}),
    ("[Nolan, brilliant]", "I think Nolan made a brilliant film, and Nolan knows it.",
     ["brilliant"], {"name"}),
    ("[not, good]", "It is not good.", ["not", "good"], set()),
    ("[cast, plot, score, pacing, editing, ending, dialogue]",
     "The cast, plot, score, pacing, editing, ending and dialogue are all there.", [],
     {"list copies the text"}),
    ("[café, naïve]", "Un café naïve et froid.", ["café", "naïve"], set()),
]


@pytest.mark.parametrize(("raw", "text", "expected", "reasons"), MESSY_GENERATIONS)
def test_messy_generations_are_parsed(raw, text, expected, reasons):
    kept, rejected = parse_generation(raw, text, SENTIMENT)
    assert [w.lower() for w in kept] == expected
    assert reasons <= {row["reason"] for row in rejected}
    for word in kept:
        assert find_word_spans(text, word), word


def test_parse_none_and_at_most_ten_words():
    assert parse_generation(None, TEXT, SENTIMENT) == ([], [])
    text = " ".join(f"w{i}x" for i in range(30))  # 30 distinct content words
    kept, rejected = parse_generation("[" + ",".join(f"w{i}x" for i in range(12)) + "]", text, SENTIMENT)
    assert len(kept) == 10 and sum(r["reason"].startswith("beyond") for r in rejected) == 2


def test_task_changes_what_is_noise():
    text = "If all cats are animals and Tom is a cat, then Tom is an animal."
    kept, _ = parse_generation("[if, all, Tom, animals]", text, get_task("logical_reasoning"))
    assert kept == ["if", "all", "Tom", "animals"]  # logical words and names matter here
    kept, rejected = parse_generation("[if, all, Tom, animals]", text, SENTIMENT)
    assert kept == ["animals"] and {"stopword", "name"} <= {r["reason"] for r in rejected}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def _joined(encoded, indices):
    return "".join(encoded.tokens[i] for i in indices)


def test_multi_token_word_maps_to_all_its_tokens(tokenizer):
    text = "It was unflinchingly bleak."
    encoded = encode_text(tokenizer, text, 256)
    (location,), missing = locate_words(["unflinchingly"], text, encoded.offsets)
    assert not missing and location.spans == [(7, 20)]
    assert len(location.token_indices) > 1  # the tiny BPE never saw this word
    assert location.token_indices == list(range(location.token_indices[0], location.token_indices[-1] + 1))
    assert _joined(encoded, location.token_indices).strip() == "unflinchingly"


def test_unicode_and_emoji_words(tokenizer):
    text = "Caf\u00e9 na\u00efve \U0001F600 r\u00e9sum\u00e9!"
    encoded = encode_text(tokenizer, text, 256)
    found, missing = locate_words(["café", "NAÏVE", "résumé", "\U0001F600", "cafe"], text, encoded.offsets)
    assert missing == ["cafe"]  # no accent folding: "cafe" is another word
    assert [loc.word for loc in found] == ["Caf\u00e9", "na\u00efve", "r\u00e9sum\u00e9", "\U0001F600"]
    for location in found:
        (start, end), = location.spans
        spans = [encoded.offsets[i] for i in location.token_indices]
        # Byte-level pieces of one character (ï, the emoji) share that character's span.
        assert text[min(s for s, _ in spans) : max(e for _, e in spans)].strip() == text[start:end]
    assert len(found[3].token_indices) > 1


def test_punctuation_repeats_and_whole_words(tokenizer):
    text = "Slow, slow! (slow) slower... so slow-paced"
    encoded = encode_text(tokenizer, text, 256)
    (location,), _ = locate_words(["slow"], text, encoded.offsets)
    # Whole words: not inside "slower"; "slow-paced" has a word boundary at the hyphen.
    assert location.spans == [(0, 4), (6, 10), (13, 17), (32, 36)]
    for start, end in location.spans:
        covering = [i for i in location.token_indices
                    if encoded.offsets[i][0] < end and encoded.offsets[i][1] > start]
        assert _joined(encoded, covering).strip(" (") == text[start:end]
    assert not {i for i, tok in enumerate(encoded.tokens) if "er" in tok} & set(location.token_indices)


def test_phrase_with_irregular_spacing_and_duplicates(tokenizer):
    text = "It was painfully   slow and Painfully slow again."
    encoded = encode_text(tokenizer, text, 256)
    found, missing = locate_words(["painfully slow", "PAINFULLY SLOW", "absent"], text, encoded.offsets)
    assert missing == ["absent"] and len(found) == 1
    assert found[0].spans == [(7, 23), (28, 42)]


def test_words_beyond_truncation_are_missing(tokenizer):
    text = "slow " * 50 + "beautiful"
    encoded = encode_text(tokenizer, text, 20)
    assert encoded.truncated
    found, missing = locate_words(["slow", "beautiful"], text, encoded.offsets)
    assert missing == ["beautiful"]
    assert max(found[0].token_indices) < 20


def test_gradient_x_input_equals_finite_differences():
    # GPT-2 in float64 is float64 throughout (LLaMA's RMSNorm computes in float32).
    loaded = tiny_loaded("gpt2")
    loaded.model.double()
    scores, attributed = fallback_scores(loaded, TEXT, SENTIMENT, label_index=0, method="gradient_x_input")
    assert attributed.label_index == 0 and attributed.method == "gradient_x_input"
    token_attribution = attributed.values.tolist()
    probe = encode_probe(loaded.tokenizer, TEXT, SENTIMENT, loaded.max_length)
    ids = torch.tensor([probe.input_ids])
    with torch.no_grad():
        base = loaded.model.get_input_embeddings()(ids)  # [1, tokens, hidden]

        def margin_with(token: int, factor: float) -> float:
            embeds = base.clone()
            embeds[0, token] *= factor
            return float(margin(label_log_probs(loaded.model, probe, embeds=embeds), 0))

        eps = 1e-4
        for token in range(0, len(probe.input_ids), 6):  # a spread of positions keeps it fast
            finite = (margin_with(token, 1 + eps) - margin_with(token, 1 - eps)) / (2 * eps)
            assert token_attribution[token] == pytest.approx(finite, rel=1e-4, abs=1e-7)
    assert all(p.grad is None for p in loaded.model.parameters())  # shared model left clean
    # Word scores: |sum of attribution| over the word's tokens.
    slow = next(row for row in scores if row["word"] == "slow")
    start = TEXT.index("slow") + probe.text_start
    tokens = [i for i, (s, e) in enumerate(probe.encoded.offsets) if s < start + 4 and e > start]
    assert slow["score"] == pytest.approx(abs(sum(token_attribution[i] for i in tokens)))
    assert [row["score"] for row in scores] == sorted((row["score"] for row in scores), reverse=True)
    assert not {"the", "was", "but"} & {row["word"].lower() for row in scores}


def test_sources_user_model_and_fallback(monkeypatch):
    loaded = tiny_loaded("llama")
    encoded = encode_text(loaded.tokenizer, TEXT, loaded.max_length)

    user = influential_words(loaded, encoded, SENTIMENT, user_words=["Beautiful", "missing"])
    assert user.source == "user" and [w.word for w in user.words] == ["beautiful"]
    assert user.missing == ["missing"] and user.raw_generation is None

    monkeypatch.setattr(influential_module, "generate_answer", lambda *a, **k: "Words: [slow, beautiful]")
    model = influential_words(loaded, encoded, SENTIMENT)
    assert model.source == "model" and [w.word for w in model.words] == ["slow", "beautiful"]
    assert model.raw_generation == "Words: [slow, beautiful]"
    assert model.token_mask(len(encoded.input_ids)).sum() == sum(len(w.token_indices) for w in model.words)

    monkeypatch.setattr(influential_module, "generate_answer", lambda *a, **k: "[word1,word2,...]")
    fallback = influential_words(loaded, encoded, SENTIMENT, label_index=1)
    assert fallback.source == f"fallback:{FALLBACK_METHOD}" == "fallback:integrated_gradients"
    assert fallback.raw_generation == "[word1,word2,...]"
    assert "negative" in fallback.note and "convergence delta" in fallback.note and fallback.attribution
    best = [row["word"] for row in fallback.attribution[: len(fallback.words)]]
    assert [w.word for w in fallback.words] == best

    old = influential_words(loaded, encoded, SENTIMENT, label_index=1, fallback_method="gradient_x_input")
    assert old.source == "fallback:gradient_x_input" and "convergence" not in old.note


def test_tiny_context_skips_generation_and_falls_back():
    loaded = tiny_loaded("opt")  # 256 positions: the step-1 prompt does not fit
    encoded = encode_text(loaded.tokenizer, TEXT, loaded.max_length)
    result = influential_words(loaded, encoded, SENTIMENT)
    assert result.source.startswith("fallback:") and "does not fit" in result.note
    assert result.raw_generation is None
