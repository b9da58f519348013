"""Token windows on a tiny real BPE tokenizer: shapes, determinism, the reference draw from long
documents, concatenation for short ones, and held-out windows that tile the text in order."""

from __future__ import annotations

import pytest
import torch

from backend.data import windows as windows_module
from backend.data.sources import corpus_from_list
from backend.data.windows import (
    WindowWarning,
    calibration_windows,
    encode,
    heldout_windows,
    tokenize_and_window,
)
from backend.errors import UserError
from tests.conftest import TINY_VOCAB, build_tiny_tokenizer

# The tiny BPE was trained on this sentence: it encodes in about half a token per byte.
COMPRESSIBLE = "The movie was painfully slow, but the acting was beautiful. "


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture
def corpus_of(monkeypatch):
    """Make the windows read a given list of documents as the set named 'fixture'."""

    def install(documents: list[str], joiner: str = "\n\n") -> None:
        corpus = corpus_from_list(documents, joiner)
        monkeypatch.setattr(windows_module, "load_corpus", lambda name, split: corpus)

    return install


def _slices(ids: list[int], seqlen: int) -> set[tuple[int, ...]]:
    """Every contiguous seqlen-token slice of a sequence (brute force)."""
    return {tuple(ids[start : start + seqlen]) for start in range(len(ids) - seqlen + 1)}


def _long_documents(count: int = 6) -> list[str]:
    return [
        " ".join(f"doc{index} word{position}" for position in range(60)) for index in range(count)
    ]


def test_windows_have_the_requested_shape_and_dtype_on_a_real_offline_set(tokenizer):
    windows = calibration_windows(tokenizer, "sst2", nsamples=5, seqlen=40, seed=0)
    assert windows.shape == (5, 40) and windows.dtype == torch.long
    assert 0 <= int(windows.min()) and int(windows.max()) < TINY_VOCAB


@pytest.mark.parametrize(
    "documents", [_long_documents(), ["Short one.", "Another short one."] * 20]
)
def test_same_seed_gives_identical_windows_and_another_seed_different_ones(
    tokenizer, corpus_of, documents
):
    corpus_of(documents)
    first = calibration_windows(tokenizer, "fixture", 8, 32, seed=11)
    assert torch.equal(first, calibration_windows(tokenizer, "fixture", 8, 32, seed=11))
    assert not torch.equal(first, calibration_windows(tokenizer, "fixture", 8, 32, seed=12))


def test_seqlen_is_capped_at_the_model_context_with_a_warning(tokenizer):
    with pytest.warns(WindowWarning, match="context"):
        windows = calibration_windows(tokenizer, "sst2", 2, 64, seed=0, max_length=16)
    assert windows.shape == (2, 16)


@pytest.mark.parametrize(
    ("nsamples", "seqlen"), [(0, 8), (-1, 8), (2, 0), (2, -5), (True, 8), ("4", 8), (2, 1.5)]
)
def test_bad_sizes_are_user_errors(tokenizer, nsamples, seqlen):
    with pytest.raises(UserError) as error:
        calibration_windows(tokenizer, "sst2", nsamples, seqlen, seed=0)
    assert "positive integer" in str(error.value)


def test_long_documents_give_windows_inside_one_document_at_random_offsets(tokenizer, corpus_of):
    documents = _long_documents()
    corpus_of(documents)
    seqlen = 48
    encoded = [encode(tokenizer, text).tolist() for text in documents]
    assert all(len(ids) > seqlen for ids in encoded)
    windows = calibration_windows(tokenizer, "fixture", 24, seqlen, seed=0)
    starts, sources = set(), set()
    for window in windows.tolist():
        # Brute force: the window is ids[s:s+seqlen] of exactly one document, with the
        # reference's range for s (0 .. len - seqlen - 1).
        matches = [
            (index, start)
            for index, ids in enumerate(encoded)
            for start in range(len(ids) - seqlen)
            if ids[start : start + seqlen] == window
        ]
        assert len(matches) == 1
        sources.add(matches[0][0])
        starts.add(matches[0][1])
    assert len(sources) > 2 and len(starts) > 5


@pytest.mark.parametrize("whole_text", [True, False], ids=["tokenized-whole", "window-by-window"])
def test_short_documents_are_joined_so_windows_are_still_full(
    tokenizer, corpus_of, monkeypatch, whole_text
):
    documents = [f"Sentence number {index} is short." for index in range(30)]
    corpus_of(documents)
    seqlen = 40
    assert all(encode(tokenizer, text).numel() < seqlen for text in documents)
    monkeypatch.setattr(
        windows_module, "WHOLE_TEXT_BYTES_PER_WINDOW_TOKEN", 10**6 if whole_text else 0
    )
    windows = calibration_windows(tokenizer, "fixture", 12, seqlen, seed=5)
    assert windows.shape == (12, seqlen)
    joined = "\n\n".join(documents)
    # Window by window, a window may wrap from the last document to the first.
    allowed = _slices(encode(tokenizer, joined + "\n\n" + joined).tolist(), seqlen)
    assert all(tuple(window) in allowed for window in windows.tolist())
    assert all("\n\n" in tokenizer.decode(window) for window in windows)
    assert len({tuple(window) for window in windows.tolist()}) > 6  # random offsets


def test_a_small_set_is_tokenized_once_and_a_large_one_never_whole(
    tokenizer, corpus_of, monkeypatch
):
    calls = []
    real_encode = windows_module.encode
    monkeypatch.setattr(
        windows_module, "encode", lambda tok, text: calls.append(text) or real_encode(tok, text)
    )
    small = [f"Sentence number {index} is short." for index in range(30)]  # 960 B <= 5 x 8 x 64
    corpus_of(small)
    calibration_windows(tokenizer, "fixture", 8, 64, seed=0)
    assert calls == ["\n\n".join(small)]
    calls.clear()
    large = [f"Sentence number {index} is short, one of many." for index in range(400)]  # 18 kB
    corpus_of(large)
    calibration_windows(tokenizer, "fixture", 4, 64, seed=0)  # no document has 64 bytes
    assert len(calls) == 8 and max(len(text) for text in calls) < 400  # one document + one chunk


def test_documents_too_short_in_tokens_fall_back_to_the_joined_text(tokenizer, corpus_of):
    # Long enough in bytes to be drawn, too short in tokens to hold a window.
    documents = [f"{index}: " + COMPRESSIBLE * 4 for index in range(10)]
    seqlen = 200
    assert all(
        len(text.encode()) >= seqlen >= encode(tokenizer, text).numel() for text in documents
    )
    corpus_of(documents)
    windows = calibration_windows(tokenizer, "fixture", 6, seqlen, seed=1)
    joined = "\n\n".join(documents)
    allowed = _slices(encode(tokenizer, joined + "\n\n" + joined).tolist(), seqlen)
    assert all(tuple(window) in allowed for window in windows.tolist())


def test_the_draw_gives_up_on_long_documents_after_a_run_of_short_ones(
    tokenizer, corpus_of, monkeypatch
):
    documents = [f"{index}: " + COMPRESSIBLE * 4 for index in range(40)]
    corpus_of(documents)
    monkeypatch.setattr(windows_module, "MAX_CONSECUTIVE_SHORT_DOCUMENTS", 3)
    calls = []
    real_encode = windows_module.encode
    monkeypatch.setattr(
        windows_module, "encode", lambda tok, text: calls.append(text) or real_encode(tok, text)
    )
    calibration_windows(tokenizer, "fixture", 1, 200, seed=0)
    # 3 rejected single documents, then one window from the joined text (its first document
    # alone, then the chunk): 40 rejections would have meant 40 single-document calls.
    single = [text for text in calls if text in documents]
    assert len(single) == 4


def test_too_little_text_is_a_user_error_and_small_sets_warn_about_overlap(tokenizer, corpus_of):
    corpus_of(["Tiny."])
    with pytest.raises(UserError) as error:
        calibration_windows(tokenizer, "fixture", 1, 64, seed=0)
    assert "fewer than seqlen=64" in str(error.value) and "\n" not in str(error.value)
    few = ["A few words here.", "And a few more words there.", "Then the end of it all."]
    corpus_of(few)
    total = encode(tokenizer, "\n\n".join(few)).numel()
    with pytest.warns(WindowWarning, match="overlap"):
        windows = calibration_windows(tokenizer, "fixture", 4, total - 2, seed=0)
    assert windows.shape == (4, total - 2)


def test_heldout_windows_tile_the_joined_text_in_order(tokenizer, corpus_of):
    documents = [
        f"Held out paragraph {index} with caf\u00e9 and more words." for index in range(12)
    ]
    corpus_of(documents, joiner=" ")
    seqlen = 16
    ids = encode(tokenizer, " ".join(documents))
    count = ids.numel() // seqlen
    windows = heldout_windows(tokenizer, "fixture", seqlen)
    assert windows.shape == (count, seqlen) and windows.dtype == torch.long
    for index in range(count):  # consecutive, non-overlapping, from the first token
        assert windows[index].tolist() == ids[index * seqlen : (index + 1) * seqlen].tolist()
    assert (
        tokenizer.decode(windows.flatten())
        == " ".join(documents)[: len(tokenizer.decode(windows.flatten()))]
    )
    assert torch.equal(heldout_windows(tokenizer, "fixture", seqlen, max_windows=2), windows[:2])
    assert torch.equal(heldout_windows(tokenizer, "fixture", seqlen, max_windows=10_000), windows)


def test_heldout_errors(tokenizer, corpus_of):
    with pytest.raises(UserError) as error:
        heldout_windows(tokenizer, "sst2", 32)
    assert "heldout" in str(error.value)
    corpus_of(["Only a line."])
    with pytest.raises(UserError) as error:
        heldout_windows(tokenizer, "fixture", 500)
    assert "fewer than seqlen=500" in str(error.value)
    for bad in (0, -3, True):
        with pytest.raises(UserError):
            heldout_windows(tokenizer, "fixture", 4, max_windows=bad)


def test_heldout_windows_of_the_offline_lambada_set(tokenizer):
    windows = heldout_windows(tokenizer, "lambada", 256, max_windows=3)
    assert windows.shape == (3, 256)
    assert tokenizer.decode(windows[0]).startswith("In my palm is a clear stone")


def test_tokenize_and_window_checks_the_starts(tokenizer):
    text = "one two three four five six seven"
    ids = encode(tokenizer, text)
    assert tokenize_and_window(tokenizer, text, 3, lambda count: []).shape == (0, 3)
    both = tokenize_and_window(tokenizer, text, 3, lambda count: [0, count - 3])
    assert both.tolist() == [ids[:3].tolist(), ids[-3:].tolist()]
    with pytest.raises(ValueError):
        tokenize_and_window(tokenizer, text, 3, lambda count: [count - 2])
