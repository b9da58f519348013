"""The one way to open a SQLite file that a server's threads share (jobs, stored NSA results)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from backend.errors import UserError


def open_shared_database(path: Path, schema: Sequence[str], what: str) -> sqlite3.Connection:
    """A WAL-mode connection usable from any thread, with ``schema`` applied; one-line errors.

    Autocommit (isolation_level None): callers write one row per statement, and WAL lets
    readers go on while a write happens.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        for statement in schema:
            conn.execute(statement)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise UserError(f"{what} database {path}: {exc}") from exc
    return conn
