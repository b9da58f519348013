"""Stored NSA results, so a view can be shared by id: SQLite on disk, recent ones in memory.

A result's id is a hash of the request that produced it (model, texts, words, task, variants,
top-k, ablation) and of the NSA code version, a hash of the source of every module of
``backend.nsa`` (the code that computes a result): the same request on the same code finds the
stored result instead of computing it again, a code change gives new ids (old results are
never served as current), and an id names one result forever; reading an old id by hand says
it is stale. Results are kept as serialized JSON
bytes, ready to send, so a cached read costs a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from backend.errors import NotFoundError
from backend.shared_sqlite import open_shared_database
from backend.source_digest import files_digest

_SCHEMA = """CREATE TABLE IF NOT EXISTS nsa_results (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    model TEXT NOT NULL,
    task TEXT NOT NULL,
    n_texts INTEGER NOT NULL,
    preview TEXT NOT NULL,
    variants TEXT NOT NULL,
    body BLOB NOT NULL
)"""
PREVIEW_CHARS = 120


# Modules of backend/nsa that store or drive results but never compute one: editing them must
# not make every stored result stale.
_NOT_COMPUTING = frozenset({"results_store.py", "commands.py"})
# Modules outside backend/nsa whose code changes an NSA result: how a text becomes tokens.
_COMPUTING_ELSEWHERE = ("data/encoding.py",)


@cache
def nsa_code_version() -> str:
    """16 hex digits of the SHA-256 of the source of every ``backend/nsa/*.py`` that computes a
    result and of ``_COMPUTING_ELSEWHERE`` (name and bytes; the store and the command line are left out)."""
    package = Path(__file__).resolve().parent
    files = sorted(path for path in package.glob("*.py") if path.name not in _NOT_COMPUTING)
    elsewhere = [package.parent / name for name in _COMPUTING_ELSEWHERE]
    return files_digest([*files, *elsewhere], package.parent)[:16]


def request_id(request: dict) -> str:
    """Stable id of an NSA request on this code: 20 hex digits of the SHA-256 of its canonical JSON."""
    canonical = json.dumps(
        {**request, "nsa_code": nsa_code_version()}, sort_keys=True, ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def marked_if_stale(body: bytes) -> bytes:
    """A stored body as served by id: one computed by other NSA code gets ``"stale": true``."""
    if f'"code_version":"{nsa_code_version()}"'.encode() in body[:400]:
        return body
    payload = json.loads(body)
    payload["stale"] = True
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def finite_json(value):
    """JSON has no NaN or infinity: such floats (an empty baseline, a zero-spread draw) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


class NsaResultStore:
    def __init__(self, path: str | Path, *, memory_entries: int = 256):
        self.path = Path(path)
        self._conn = open_shared_database(self.path, [_SCHEMA], "NSA results")
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, bytes] = OrderedDict()
        self._memory_entries = memory_entries

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _remember(self, result_id: str, body: bytes) -> None:
        self._recent[result_id] = body
        self._recent.move_to_end(result_id)
        while len(self._recent) > self._memory_entries:
            self._recent.popitem(last=False)

    def get_bytes(self, result_id: str) -> bytes | None:
        """The stored response body ``{"id", "created_at", "request", "result"}`` as JSON bytes."""
        with self._lock:
            body = self._recent.get(result_id)
            if body is not None:
                self._recent.move_to_end(result_id)
                return body
            row = self._conn.execute(
                "SELECT body FROM nsa_results WHERE id = ?", (result_id,)
            ).fetchone()
            if row is None:
                return None
            body = bytes(row[0])
            self._remember(result_id, body)
            return body

    def require_bytes(self, result_id: str) -> bytes:
        body = self.get_bytes(result_id)
        if body is None:
            raise NotFoundError(f"unknown NSA result {result_id!r}")
        return body

    def put(self, result_id: str, request: dict, result: dict) -> bytes:
        created_at = datetime.now(UTC).isoformat(timespec="seconds")
        body = json.dumps(
            {
                "id": result_id,
                "created_at": created_at,
                "code_version": nsa_code_version(),
                "request": request,
                "result": finite_json(result),
            },
            ensure_ascii=False,
            allow_nan=False,
            separators=(",", ":"),
        ).encode("utf-8")
        texts = request.get("texts") or [""]
        preview = " ".join(texts[0].split())[:PREVIEW_CHARS]
        with self._lock:
            inserted = self._conn.execute(
                "INSERT OR IGNORE INTO nsa_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    result_id,
                    created_at,
                    request.get("model", ""),
                    request.get("task", ""),
                    len(texts),
                    preview,
                    json.dumps(request.get("variants", [])),
                    body,
                ),
            ).rowcount
            if not inserted:  # the same request finished first elsewhere: its result is the one
                body = bytes(
                    self._conn.execute(
                        "SELECT body FROM nsa_results WHERE id = ?", (result_id,)
                    ).fetchone()[0]
                )
            self._remember(result_id, body)
        return body

    def list(self, *, model: str | None = None, limit: int = 100) -> list[dict]:
        where, values = ("WHERE model = ?", (model,)) if model else ("", ())
        with self._lock:
            rows = self._conn.execute(
                f"SELECT id, created_at, model, task, n_texts, preview, variants FROM nsa_results {where} "
                "ORDER BY rowid DESC LIMIT ?",
                (*values, int(limit)),
            ).fetchall()
        return [
            {
                "id": row[0],
                "created_at": row[1],
                "model": row[2],
                "task": row[3],
                "n_texts": row[4],
                "preview": row[5],
                "variants": json.loads(row[6]),
            }
            for row in rows
        ]
