"""A user's own text file as records ``{"text", "label"?, "words"?}``: the one reader for every path.

The CLI (``prunelens attribute --file``), the API upload and ``file:PATH`` calibration all read
a file here, so the same file gives the same texts everywhere:

* ``.txt`` — paragraphs split on blank lines (a file without blank lines is one text);
* ``.jsonl`` — one object per line with a string ``"text"``, optionally ``"label"`` (the answer
  word, e.g. ``positive``; ``"label_text"`` is read too) and ``"words"`` (the influential
  words, a list of strings);
* ``.csv`` — a ``text`` column, optionally ``label`` and ``words`` (comma-separated) columns.

Texts are stripped and empty ones dropped. Every problem is a one-line ``UserError`` that
names the file.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from backend.errors import NotFoundError, UserError

USER_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")


def decode_utf8(path: Path, raw: bytes) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start})") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_csv_rows(path: Path, required: Sequence[str]) -> list[dict]:
    """The rows of a UTF-8 CSV file with a header that has every ``required`` column."""
    text = decode_utf8(path, path.read_bytes())
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


def _record(text: str, label: str | None, words: list[str] | None) -> dict:
    record: dict = {"text": text.strip()}
    if label is not None and label.strip():
        record["label"] = label.strip()
    if words:
        record["words"] = words
    return record


_BLANK_LINES = re.compile(r"\n[ \t]*\n")


def _txt_records(path: Path) -> list[dict]:
    return [
        _record(text, None, None)
        for text in _BLANK_LINES.split(decode_utf8(path, path.read_bytes()))
    ]


def _jsonl_label(path: Path, number: int, row: dict) -> str | None:
    # "label_text" is what labelled_examples() calls the answer word; both spellings are read.
    value = row.get("label", row.get("label_text"))
    if value is None or (isinstance(value, (str, int)) and not isinstance(value, bool)):
        return None if value is None else str(value)
    raise UserError(f'{path}: line {number} field "label" must be a string or an integer')


def _jsonl_words(path: Path, number: int, row: dict) -> list[str] | None:
    value = row.get("words")
    if value is None or (isinstance(value, list) and all(isinstance(w, str) for w in value)):
        return None if value is None else [word.strip() for word in value if word.strip()]
    raise UserError(f'{path}: line {number} field "words" must be a list of strings')


def _jsonl_records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(decode_utf8(path, path.read_bytes()).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f'{path}: line {number} has no string field "text"')
        label, words = _jsonl_label(path, number, row), _jsonl_words(path, number, row)
        records.append(_record(row["text"], label, words))
    return records


def _csv_records(path: Path) -> list[dict]:
    return [
        _record(
            row["text"] or "",
            row.get("label"),
            [word.strip() for word in (row.get("words") or "").split(",") if word.strip()],
        )
        for row in read_csv_rows(path, ("text",))
    ]


_READERS: dict[str, Callable[[Path], list[dict]]] = {
    ".txt": _txt_records,
    ".jsonl": _jsonl_records,
    ".csv": _csv_records,
}


def resolve_user_file(raw: str | Path) -> Path:
    """The absolute path of an existing file of a supported type (NotFoundError when missing)."""
    path = Path(raw).expanduser()
    if not path.exists():
        raise NotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a file")
    if path.suffix.lower() not in _READERS:
        raise UserError(
            f"{path}: unsupported file type {path.suffix or '(none)'!r}; use .txt, .jsonl or .csv"
        )
    return path.resolve()


@lru_cache(maxsize=32)
def _cached_records(path: Path, _mtime_ns: int, _size: int) -> tuple[dict, ...]:
    # mtime and size are part of the cache key: an edited file is read again.
    records = [record for record in _READERS[path.suffix.lower()](path) if record["text"]]
    if not records:
        raise UserError(f"{path}: no text in the file (it is empty or blank)")
    return tuple(records)


def read_user_file(raw: str | Path) -> list[dict]:
    """The file's records ``{"text", "label"?, "words"?}`` (fresh copies; cached by mtime/size)."""
    path = resolve_user_file(raw)
    stat = path.stat()
    records = _cached_records(path, stat.st_mtime_ns, stat.st_size)
    return [
        {**record, **({"words": list(record["words"])} if "words" in record else {})}
        for record in records
    ]


def clear_user_file_cache() -> None:
    _cached_records.cache_clear()
