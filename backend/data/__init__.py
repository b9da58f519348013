"""Text data: named calibration/held-out/labelled sets and the token windows cut from them."""

from backend.data.sources import (
    labelled_examples,
    list_text_sets,
    load_corpus,
    load_documents,
)
from backend.data.windows import calibration_windows, heldout_windows, tokenize_and_window

__all__ = [
    "calibration_windows",
    "heldout_windows",
    "labelled_examples",
    "list_text_sets",
    "load_corpus",
    "load_documents",
    "tokenize_and_window",
]
