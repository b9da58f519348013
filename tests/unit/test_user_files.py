"""One reader for a user's text file: the CLI (`attribute --file`), the API upload and `file:`
calibration get the same records from the same file, and the same one-line errors (this file
holds the user-file error cases of the data tests too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.api.uploads import texts_from_upload
from backend.data.sources import load_documents
from backend.data.user_files import read_user_file
from backend.errors import NotFoundError, UserError
from backend.nsa.commands import file_inputs

REVIEWS = [
    ("A slow, beautiful film.", "positive", ["slow", "beautiful"]),
    ("Dull and far, far too long;\nI left early.", "negative", ["Dull"]),
    ("Nothing to say about it.", None, None),
]


def _write(tmp_path: Path, suffix: str) -> Path:
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".txt":
        path.write_text("\n\n \t\n".join(text for text, _, _ in REVIEWS) + "\n\n", encoding="utf-8")
    elif suffix == ".jsonl":
        lines = []
        for text, label, words in REVIEWS:
            row = {"text": text, **({"label": label} if label else {})}
            lines.append(json.dumps({**row, **({"words": words} if words else {})}))
        path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    else:
        rows = ["id,text,label,words"]
        for index, (text, label, words) in enumerate(REVIEWS):
            rows.append(f'{index},"{text}",{label or ""},"{",".join(words or [])}"')
        path.write_text("\r\n".join(rows) + "\r\n", encoding="utf-8")
    return path


def _expected(suffix: str) -> list[dict]:
    if suffix == ".txt":
        return [{"text": text} for text, _, _ in REVIEWS]
    return [
        {"text": text, **({"label": label} if label else {}), **({"words": words} if words else {})}
        for text, label, words in REVIEWS
    ]


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_the_same_file_gives_the_same_records_on_every_path(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    records = read_user_file(path)
    assert records == _expected(suffix)
    texts = [record["text"] for record in records]

    cli_texts, cli_words = file_inputs(str(path))  # prunelens attribute --file
    uploaded = texts_from_upload(path.name, path.read_bytes(), max_texts=64)  # POST /nsa/upload
    calibration = load_documents(f"file:{path}")  # --calibration file:PATH

    assert [row["text"] for row in cli_texts] == uploaded == calibration == texts
    assert [row.get("label_text") for row in cli_texts] == [r.get("label") for r in records]
    if suffix == ".txt":
        assert cli_words is None
    else:
        assert cli_words == [words or [] for _, _, words in REVIEWS]


def test_label_text_is_read_as_the_label_and_records_are_fresh_copies(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text('{"text": "Fine.", "label_text": "positive", "words": ["Fine"]}\n')
    first = read_user_file(path)
    assert first == [{"text": "Fine.", "label": "positive", "words": ["Fine"]}]
    first[0]["words"].append("changed")
    assert read_user_file(path)[0]["words"] == ["Fine"]


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("table.csv", b"id,body\n1,hello\n", "'text' (columns found: id, body)"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not UTF-8 text (invalid byte at offset 3)"),
        ("empty.txt", b"", "no text in the file"),
        ("blank.txt", b"\n \n\t\n", "no text in the file"),
        ("blank.jsonl", b"\n \n", "no text in the file"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": \n', "line 2 is not valid JSON"),
        ("notext.jsonl", b'{"body": "x"}\n', 'line 1 has no string field "text"'),
        ("badlabel.jsonl", b'{"text": "x", "label": [1]}\n', 'line 1 field "label" must be'),
        ("badwords.jsonl", b'{"text": "x", "words": "a,b"}\n', 'line 1 field "words" must be'),
        ("data.parquet", b"PAR1", "unsupported file type '.parquet'"),
    ],
)
def test_bad_files_are_the_same_one_line_error_on_every_path(tmp_path, filename, content, expected):
    path = tmp_path / filename
    path.write_bytes(content)
    messages = []
    for read in (
        lambda: read_user_file(path),
        lambda: file_inputs(str(path)),
        lambda: load_documents(f"file:{path}"),
        lambda: texts_from_upload(filename, content, max_texts=64),
    ):
        with pytest.raises(UserError) as error:
            read()
        message = str(error.value)
        assert expected in message and "\n" not in message
        messages.append(message.replace(str(path), filename))
    if filename != "data.parquet":  # the upload names its accepted types in its own words
        assert len(set(messages)) == 1, messages


def test_a_missing_file_is_not_found_on_every_path(tmp_path):
    for read in (read_user_file, file_inputs, lambda path: load_documents(f"file:{path}")):
        with pytest.raises(NotFoundError, match="no such file"):
            read(str(tmp_path / "absent.txt"))
