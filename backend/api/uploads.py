"""Texts from an uploaded file (.txt, .csv, .jsonl), read by the same readers as ``file:PATH`` sets.

The bytes go to a private temporary folder and through ``backend.data.user_files.read_user_file``,
the reader of ``prunelens attribute --file`` and ``file:PATH`` calibration, so the same file gives
the same texts everywhere: .txt on blank lines (one paragraph = one text), .csv from its ``text``
column, .jsonl from each line's ``"text"`` field. Error messages name the uploaded file, not the
temporary path.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

from backend.errors import UserError

UPLOAD_SUFFIXES = (".txt", ".csv", ".jsonl")


class UploadTooLargeError(UserError):
    status_code = 413


_UNPRINTABLE = re.compile(r"[^\w .,()+-]")


def display_name(filename: str | None) -> str:
    """The client's file name reduced to something safe to echo in a message."""
    raw = filename or "upload"
    base = PureWindowsPath(PurePosixPath(raw).name).name  # drop any folder part, / or \\
    return _UNPRINTABLE.sub("_", base)[:100] or "upload"


def records_from_upload(filename: str | None, raw: bytes, *, max_texts: int) -> list[dict]:
    """The file's ``{text, label?, words?}`` records, read by ``read_user_file``."""
    name = display_name(filename)
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UserError(
            f"{name}: unsupported file type {suffix or '(none)'!r}; upload .txt, .csv or .jsonl"
        )
    from backend.data.user_files import read_user_file

    with tempfile.TemporaryDirectory(prefix="prunelens-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(raw)
        try:
            records = read_user_file(path)
        except UserError as exc:
            message = str(exc).replace(str(path.resolve()), name).replace(str(path), name)
            raise UserError(message) from None
    if len(records) > max_texts:
        raise UserError(f"{name}: {len(records)} texts; NSA takes at most {max_texts} at once")
    return records


def texts_from_upload(filename: str | None, raw: bytes, *, max_texts: int) -> list[str]:
    return [record["text"] for record in records_from_upload(filename, raw, max_texts=max_texts)]


def words_from_records(records: list[dict]) -> list[list[str]] | None:
    """Per-text influential words (``words`` of .jsonl lines or .csv rows), aligned with the
    records' texts; None when no record carries words."""
    if not any("words" in record for record in records):
        return None
    return [list(record.get("words", [])) for record in records]
