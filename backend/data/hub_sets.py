"""Sets read from the Hugging Face Hub through ``datasets``: the files the community uses.

The joiners follow the reference perplexity/calibration code (SparseGPT, Wanda), so that
perplexities compare with published ones: WikiText2 train " ", test "\\n\\n"; PTB " "; C4
validation " ". Whether the hub may be used is read from HF_HUB_OFFLINE/HF_DATASETS_OFFLINE,
which the process sets at start; this module never changes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from backend.data.corpus import TextCorpus, corpus_from_list
from backend.data.prompt_formats import wnli_document
from backend.errors import UserError

# The reference C4 perplexity (SparseGPT/Wanda) joins the first 1100 validation documents.
C4_HELDOUT_DOCUMENTS = 1100


@dataclass(frozen=True)
class HubFile:
    """One data file of a Hugging Face dataset repository, read with a datasets builder."""

    repo_id: str
    path: str
    builder: str  # "json" or "parquet"
    revision: str | None = None


C4_TRAIN = HubFile("allenai/c4", "en/c4-train.00000-of-01024.json.gz", "json")
C4_VALIDATION = HubFile("allenai/c4", "en/c4-validation.00000-of-00008.json.gz", "json")
WIKITEXT2_TRAIN = HubFile(
    "Salesforce/wikitext", "wikitext-2-raw-v1/train-00000-of-00001.parquet", "parquet"
)
WIKITEXT2_TEST = HubFile(
    "Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet", "parquet"
)
# ptb_text_only is a script dataset that datasets>=4 cannot run; the hub's own parquet
# conversion of it (branch refs/convert/parquet) has the same rows and the "sentence" column.
_PTB_REVISION = "refs/convert/parquet"
PTB_TRAIN = HubFile(
    "ptb-text-only/ptb_text_only", "penn_treebank/train/0000.parquet", "parquet", _PTB_REVISION
)
PTB_TEST = HubFile(
    "ptb-text-only/ptb_text_only", "penn_treebank/test/0000.parquet", "parquet", _PTB_REVISION
)
WNLI_TRAIN = HubFile("nyu-mll/glue", "wnli/train-00000-of-00001.parquet", "parquet")


def hub_file_url(hub_file: HubFile) -> str:
    """The fsspec address of a hub file (tests point this at a local folder of the same layout)."""
    revision = f"@{quote(hub_file.revision, safe='')}" if hub_file.revision else ""
    return f"hf://datasets/{hub_file.repo_id}{revision}/{hub_file.path}"


def hub_switched_off() -> bool:
    return any(
        os.environ.get(key, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


class HubUnavailable(UserError):
    """A hub set that cannot be read here. ``backend.data.sources``, which knows the offline
    sets, adds them to the message (this module stays below it: no import back up)."""


def _unavailable(set_name: str, reason: str) -> HubUnavailable:
    return HubUnavailable(f"{set_name} is not available: it comes from the Hugging Face Hub and {reason}")


def read_hub_table(set_name: str, hub_file: HubFile):
    """The file as a datasets.Dataset (downloaded once into the datasets cache)."""
    if hub_switched_off():
        raise _unavailable(
            set_name, "the hub is switched off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
        )
    from datasets import load_dataset

    try:
        return load_dataset(hub_file.builder, data_files=hub_file_url(hub_file), split="train")
    except Exception as exc:
        # Network, auth and missing-file errors come in many types (httpx, requests,
        # huggingface_hub, fsspec); every one of them means "this set cannot be had here".
        reason = " ".join(str(exc).split())[:160]
        raise _unavailable(set_name, f"reading it failed ({type(exc).__name__}: {reason})") from exc


def _column_corpus(table, column: str, joiner: str) -> TextCorpus:
    """A lazy view of one text column: no copy into Python strings until a document is read."""
    import pyarrow.compute as pc

    arrow_column = table.data.column(column)
    if arrow_column.null_count:
        return corpus_from_list([text or "" for text in table[column]], joiner)
    lengths = pc.binary_length(arrow_column).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths.flags.writeable = False
    return TextCorpus(table[column], joiner, lengths)


def c4_calibration() -> TextCorpus:
    return _column_corpus(read_hub_table("c4", C4_TRAIN), "text", "\n\n")


def c4_heldout() -> TextCorpus:
    table = read_hub_table("c4", C4_VALIDATION)
    return corpus_from_list(table["text"][:C4_HELDOUT_DOCUMENTS], " ")


def wikitext2(hub_file: HubFile, joiner: str) -> Callable[[], TextCorpus]:
    # Rows are kept as published, empty ones included, so the joined text is the reference's.
    return lambda: _column_corpus(read_hub_table("wikitext2", hub_file), "text", joiner)


def ptb(hub_file: HubFile) -> Callable[[], TextCorpus]:
    return lambda: _column_corpus(read_hub_table("ptb", hub_file), "sentence", " ")


def wnli_calibration() -> TextCorpus:
    return corpus_from_list(
        [wnli_document(example) for example in read_hub_table("wnli", WNLI_TRAIN)]
    )
