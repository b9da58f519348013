"""Calibration and held-out windows with the embedded SmolLM2 tokenizer (byte-level BPE)."""

from __future__ import annotations

import pytest
import torch

from backend.data.sources import load_documents
from backend.data.windows import calibration_windows, encode, heldout_windows
from tests.conftest import SHARED_CACHE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_tokenizer(request):
    from transformers import AutoTokenizer

    folder = SHARED_CACHE / "models" / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        request.getfixturevalue("embedded")  # converts the embedded model into the cache once
    return AutoTokenizer.from_pretrained(str(folder))


def test_sst2_calibration_windows_are_real_text_of_the_set(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    windows = calibration_windows(
        tokenizer, "sst2", nsamples=6, seqlen=128, seed=0, max_length=8192
    )
    assert windows.shape == (6, 128) and windows.dtype == torch.long
    assert int(windows.max()) < len(tokenizer)
    joined = "\n\n".join(load_documents("sst2"))
    wrapped = joined + "\n\n" + joined
    for window in windows:
        text = tokenizer.decode(window, clean_up_tokenization_spaces=False).strip("\ufffd")
        assert len(text) > 200 and text in wrapped
    assert torch.equal(windows, calibration_windows(tokenizer, "sst2", 6, 128, seed=0))


def test_lambada_heldout_windows_tile_the_text_in_order(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    seqlen = 2048
    windows = heldout_windows(tokenizer, "lambada", seqlen)
    joined = "\n\n".join(load_documents("lambada", "heldout"))
    ids = encode(tokenizer, joined)
    assert windows.shape == (ids.numel() // seqlen, seqlen)
    assert torch.equal(windows.flatten(), ids[: windows.numel()])
    decoded = tokenizer.decode(windows.flatten(), clean_up_tokenization_spaces=False)
    assert joined.startswith(decoded) and len(decoded) > 0.9 * len(joined)
