"""The results store: lm-eval results in one SQLite file, with the manifests of the variants they
measure and the outcome of every sweep cell.

A result is keyed by (base model, variant, task, limit, sample seed, data source, harness
version, code version, number of few-shot demonstrations) and keeps lm-eval's own result dict (``{"acc,none": 0.61,
"acc_stderr,none": 0.02, ...}``) and, in ``example_outcomes``, each example's score (doc id -> 0/1),
so that two results on the same examples can be compared pair by pair. A stored result of the
current code is reused, never recomputed; one stored by other code (``code_version.py``) is listed
with ``stale: true``, left out of tables and computed again. Several writers at once (processes, Ray
workers on a shared disk)
are safe: WAL journal, a busy timeout, and every write is one short IMMEDIATE transaction; when
two writers insert the same key the first row stays (both computed the same thing).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from backend.errors import UserError
from backend.evaluation.result_records import (
    DENSE,
    FIRST_ROWS,
    NO_SAMPLE,
    WHOLE_SPLIT,
    ResultKey,
    StoredResult,
    now_iso,
)

# 2: results.sample_seed and example_outcomes; 3: results.code_version; 4: results.num_fewshot
SCHEMA_VERSION = 4
BUSY_TIMEOUT_S = 120.0

_RESULTS_TABLE = """
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    base_model TEXT NOT NULL,
    variant_id TEXT NOT NULL,
    task TEXT NOT NULL,
    limit_n INTEGER NOT NULL,
    data_source TEXT NOT NULL,
    harness_version TEXT NOT NULL,
    code_version TEXT NOT NULL,
    n_examples INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    task_version TEXT,
    task_config TEXT,
    seconds REAL,
    created_at TEXT NOT NULL,
    sample_seed INTEGER NOT NULL DEFAULT -1,
    num_fewshot INTEGER NOT NULL DEFAULT 0,
    UNIQUE (base_model, variant_id, task, limit_n, sample_seed, data_source, harness_version, code_version,
            num_fewshot)
)"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
{_RESULTS_TABLE};
CREATE TABLE IF NOT EXISTS example_outcomes (
    result_id INTEGER PRIMARY KEY REFERENCES results (id),
    outcomes TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS variants (
    variant_id TEXT PRIMARY KEY,
    base_model TEXT NOT NULL,
    method TEXT,
    calibration TEXT,
    sparsity TEXT,
    seqlen INTEGER,
    nsamples INTEGER,
    seed INTEGER,
    manifest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sweep_cells (
    sweep TEXT NOT NULL,
    cell TEXT NOT NULL,
    status TEXT NOT NULL,
    variant_id TEXT,
    error TEXT,
    detail TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (sweep, cell)
);
CREATE TABLE IF NOT EXISTS experiments (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
"""


def database_path(location: str | Path) -> Path:
    """A plain path or a ``sqlite:///path`` URL (four slashes for an absolute path)."""
    text = str(location).strip()
    if text.startswith("sqlite:///"):
        text = text[len("sqlite:///"):]
    elif "://" in text:
        raise UserError(f"results URL {text!r}: only sqlite:///PATH (or a plain file path) is supported")
    if not text:
        raise UserError("empty results location")
    return Path(text).expanduser()


_RESULT_COLUMNS = (
    "r.base_model, r.variant_id, r.task, r.limit_n, r.sample_seed, r.data_source, r.harness_version, "
    "r.code_version, r.num_fewshot, r.n_examples, "
    "r.metrics, r.task_version, r.seconds, r.created_at, "
    "v.method, v.calibration, v.sparsity, v.seqlen, v.nsamples, v.seed"
)


def _result_from_row(row: tuple) -> StoredResult:
    (base, variant_id, task, limit, sample_seed, source, harness, code, shots, n_examples, metrics, task_version,
     seconds, created_at, method, calibration, sparsity, seqlen, nsamples, seed) = row
    key = ResultKey(base, variant_id, task, None if limit == WHOLE_SPLIT else limit, source, harness,
                    None if sample_seed == NO_SAMPLE else sample_seed, code, shots)
    variant = None
    if variant_id != DENSE:
        variant = {"method": method, "calibration": calibration, "sparsity": sparsity,
                   "seqlen": seqlen, "nsamples": nsamples, "seed": seed}
    return StoredResult(key, n_examples, json.loads(metrics), task_version, seconds, created_at, variant)


def _upgrade_results_table(conn: sqlite3.Connection) -> None:
    """Older results tables are rebuilt with today's key. One without sample_seed scored the first
    N rows, so its limited runs get FIRST_ROWS and are never taken for a seeded sample; one
    without code_version gets "" and so reads as stale: nothing says which code computed it. One
    without num_fewshot gets 0: until then every evaluation ran 0-shot (none of our task configs sets
    a number, and the runner set 0 where a task sets none)."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(results)")]
    if not columns or {"sample_seed", "code_version", "num_fewshot"} <= set(columns):
        return
    conn.execute("ALTER TABLE results RENAME TO results_old")
    conn.execute(_RESULTS_TABLE)
    kept = ", ".join(columns)
    added, values = [], []
    if "sample_seed" not in columns:
        added.append("sample_seed")
        values.append(f"CASE WHEN limit_n = {WHOLE_SPLIT} THEN {NO_SAMPLE} ELSE {FIRST_ROWS} END")
    if "code_version" not in columns:
        added.append("code_version")
        values.append("''")
    if "num_fewshot" not in columns:
        added.append("num_fewshot")
        values.append("0")
    conn.execute(f"INSERT INTO results ({kept}, {', '.join(added)}) "
                 f"SELECT {kept}, {', '.join(values)} FROM results_old")
    conn.execute("DROP TABLE results_old")


class ResultsStore:
    """Open with a path or sqlite URL; every method opens its own short-lived connection, so one
    store object may be shared by threads, and many processes may use the same file."""

    def __init__(self, location: str | Path):
        self.path = database_path(location)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"results database {self.path}: cannot create its folder ({exc.strerror})") from exc
        with self._transaction() as conn:
            _upgrade_results_table(conn)
            # One statement at a time: executescript() would commit the open transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @classmethod
    def from_settings(cls, cache_settings=None) -> ResultsStore:
        """The store PRUNELENS_RESULTS_URL names, else results.db in ``cache_settings``' cache
        (default: the environment's)."""
        from backend.evaluation.settings import evaluation_settings

        return cls(evaluation_settings().results_location_in(cache_settings))

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable at each checkpoint; safe with WAL
        except sqlite3.DatabaseError as exc:
            raise UserError(f"results database {self.path}: {exc}") from exc
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: takes the write lock up front (waiting up to the busy
        timeout), so concurrent writers queue instead of failing half-way."""
        conn = self._connect()
        try:
            for attempt in range(5):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:  # "database is locked" past the timeout
                    if attempt == 4:
                        raise UserError(f"results database {self.path} stays locked: {exc}") from exc
                    time.sleep(0.5 * (attempt + 1))
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    # ------------------------------------------------------------------ results

    def get(self, key: ResultKey) -> StoredResult | None:
        with self._reader() as conn:
            row = conn.execute(
                f"SELECT {_RESULT_COLUMNS} FROM results r LEFT JOIN variants v USING (variant_id) "
                "WHERE r.base_model=? AND r.variant_id=? AND r.task=? AND r.limit_n=? AND r.sample_seed=? "
                "AND r.data_source=? AND r.harness_version=? AND r.code_version=? AND r.num_fewshot=?",
                key.row(),
            ).fetchone()
        return _result_from_row(row) if row else None

    def put(self, key: ResultKey, *, n_examples: int, metrics: dict, task_version: str | None = None,
            task_config: dict | None = None, seconds: float | None = None,
            outcomes: dict[str, dict[int, float]] | None = None) -> StoredResult:
        """Store a result (and its per-example ``outcomes``: metric -> {doc id: score}); if the key
        is already there (another writer won), keep and return that one."""
        with self._transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO results (base_model, variant_id, task, limit_n, sample_seed, data_source, "
                "harness_version, code_version, num_fewshot, n_examples, metrics, task_version, task_config, "
                "seconds, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING RETURNING id",
                (*key.row(), int(n_examples), json.dumps(metrics, default=str),
                 None if task_version is None else str(task_version),
                 json.dumps(task_config, default=str) if task_config is not None else None,
                 seconds, now_iso()),
            ).fetchone()
            if inserted and outcomes:
                conn.execute("INSERT INTO example_outcomes VALUES (?, ?)", (inserted[0], json.dumps(outcomes)))
        stored = self.get(key)
        assert stored is not None
        return stored

    def outcomes(self, key: ResultKey) -> dict[str, dict[int, float]] | None:
        """Per-example scores of a stored result: ``{"acc": {doc id: 0.0 | 1.0, ...}, ...}``
        (None: stored without them)."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT o.outcomes FROM example_outcomes o JOIN results r ON r.id = o.result_id "
                "WHERE r.base_model=? AND r.variant_id=? AND r.task=? AND r.limit_n=? AND r.sample_seed=? "
                "AND r.data_source=? AND r.harness_version=? AND r.code_version=? AND r.num_fewshot=?",
                key.row(),
            ).fetchone()
        if row is None:
            return None
        return {metric: {int(doc): score for doc, score in scores.items()}
                for metric, scores in json.loads(row[0]).items()}

    def record_variant(self, manifest: dict) -> None:
        """Keep the fields of a variant's manifest that tables group by (the variant may live on
        another machine, or be deleted later; its results stay explained)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO variants VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (variant_id) DO UPDATE "
                "SET manifest = excluded.manifest",
                (manifest["id"], manifest.get("base_model", ""), manifest.get("method"),
                 manifest.get("calibration"), manifest.get("sparsity"), manifest.get("seqlen"),
                 manifest.get("nsamples"), manifest.get("seed"), json.dumps(manifest, default=str)),
            )

    def results(self, *, base_model: str | None = None, variant_id: str | None = None,
                task: str | None = None) -> list[StoredResult]:
        clauses, values = [], []
        for column, value in (("r.base_model", base_model), ("r.variant_id", variant_id), ("r.task", task)):
            if value is not None:
                clauses.append(f"{column} = ?")
                values.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._reader() as conn:
            rows = conn.execute(
                f"SELECT {_RESULT_COLUMNS} FROM results r LEFT JOIN variants v USING (variant_id) "
                f"{where} ORDER BY r.id",
                values,
            ).fetchall()
        return [_result_from_row(row) for row in rows]

    def count(self) -> int:
        with self._reader() as conn:
            return conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]

    # ------------------------------------------------------------------ sweep cells

    def record_cell(self, sweep: str, cell: str, status: str, *, variant_id: str | None = None,
                    error: str | None = None, detail: dict | None = None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO sweep_cells VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (sweep, cell) DO UPDATE SET "
                "status=excluded.status, variant_id=excluded.variant_id, error=excluded.error, "
                "detail=excluded.detail, updated_at=excluded.updated_at",
                (sweep, cell, status, variant_id, error, json.dumps(detail or {}, default=str), now_iso()),
            )

    def cells(self, sweep: str) -> dict[str, dict]:
        with self._reader() as conn:
            rows = conn.execute(
                "SELECT cell, status, variant_id, error, detail, updated_at FROM sweep_cells WHERE sweep = ?",
                (sweep,),
            ).fetchall()
        return {
            cell: {"status": status, "variant_id": variant_id, "error": error,
                   "detail": json.loads(detail or "{}"), "updated_at": updated_at}
            for cell, status, variant_id, error, detail, updated_at in rows
        }

    # ------------------------------------------------------------------ experiments

    def put_experiment(self, kind: str, experiment_id: str, status: str, body: dict) -> None:
        """Store (or replace) an experiment's document, e.g. kind "protect"
        (backend.guided.protect_experiment); written whole, in one transaction."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET "
                "status=excluded.status, body=excluded.body, updated_at=excluded.updated_at",
                (kind, experiment_id, status, json.dumps(body, default=str), now_iso()),
            )

    def experiment(self, kind: str, experiment_id: str) -> dict | None:
        with self._reader() as conn:
            row = conn.execute("SELECT body FROM experiments WHERE kind = ? AND id = ?",
                               (kind, experiment_id)).fetchone()
        return None if row is None else json.loads(row[0])

    def experiments(self, kind: str) -> list[dict]:
        """Every stored experiment of ``kind``, most recently updated first."""
        with self._reader() as conn:
            rows = conn.execute("SELECT body FROM experiments WHERE kind = ? ORDER BY updated_at DESC",
                                (kind,)).fetchall()
        return [json.loads(row[0]) for row in rows]
