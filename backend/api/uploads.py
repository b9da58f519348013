"""Texts from an uploaded file (.txt, .csv, .jsonl), read by the same readers as ``file:PATH`` sets.

The bytes go to a private temporary folder and through ``backend.data.sources.load_documents``,
so an upload and a file named on the command line are split into texts the same way: .txt on
blank lines (one paragraph = one text), .csv from its ``text`` column, .jsonl from each line's
``"text"`` field. Error messages name the uploaded file, not the temporary path.
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


def texts_from_upload(filename: str | None, raw: bytes, *, max_texts: int) -> list[str]:
    name = display_name(filename)
    suffix = Path(name).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UserError(
            f"{name}: unsupported file type {suffix or '(none)'!r}; upload .txt, .csv or .jsonl"
        )
    if not raw.strip():
        raise UserError(f"{name}: the file is empty")
    from backend.data.sources import FILE_PREFIX, load_documents

    with tempfile.TemporaryDirectory(prefix="prunelens-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(raw)
        try:
            texts = load_documents(f"{FILE_PREFIX}{path}")
        except UserError as exc:
            message = str(exc).replace(str(path.resolve()), name).replace(str(path), name)
            raise UserError(message) from None
    if len(texts) > max_texts:
        raise UserError(f"{name}: {len(texts)} texts; NSA takes at most {max_texts} at once")
    return texts


def words_from_jsonl_upload(filename: str | None, raw: bytes, count: int) -> list[list[str]] | None:
    """Per-text influential words of an uploaded .jsonl (``"words"`` on its lines), aligned with
    ``texts_from_upload``'s texts; None when the file is not .jsonl or no line carries words."""
    name = display_name(filename)
    if Path(name).suffix.lower() != ".jsonl":
        return None
    from backend.nsa.inputs import jsonl_records

    rows = [row for row in jsonl_records(raw.decode("utf-8"), name) if row["text"].strip()]
    if len(rows) != count or all(row.get("words") is None for row in rows):
        return None
    return [list(row.get("words") or []) for row in rows]
