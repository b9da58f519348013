"""Where indexes live (``<cache>/indexes/<id>/``), their ids, code version, listing and manifests.

An index id is a readable slug plus a hash of what decides its numbers: the request (without
batch_tokens, which does not change them), the model, the variants, a ``file:`` corpus' bytes
and the code version. The code version hashes the source of backend/neurons and of the project
modules it reads the corpus and models with; an index from other code is listed as stale.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from pathlib import Path

from backend.config import Settings, get_settings
from backend.data.sources import FILE_PREFIX
from backend.errors import NotFoundError, UserError
from backend.neurons.request import IndexRequest
from backend.source_digest import files_digest
from backend.storage import discard_staging

MANIFEST = "manifest.json"
_PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Project modules outside backend/neurons whose code changes what an index holds.
_READ_MODULES = (
    "backend/models/adapters.py", "backend/models/hooks.py", "backend/models/loader.py",
    "backend/data/sources.py", "backend/data/corpus.py", "backend/data/offline_sets.py",
    "backend/data/prompt_formats.py", "backend/data/user_files.py",
    "backend/data/encoding.py", "backend/nsa/capture.py", "backend/pruning/variants.py",
)
_INDEX_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")


@cache
def code_version() -> str:
    """12 hex digits over the source of backend/neurons and ``_READ_MODULES``."""
    package = sorted(Path(__file__).resolve().parent.glob("*.py"))
    return files_digest([*package, *(_PROJECT_ROOT / name for name in _READ_MODULES)], _PROJECT_ROOT)[:12]


def indexes_root(settings: Settings | None = None) -> Path:
    return (settings or get_settings()).cache_dir / "indexes"


def index_dir(index_id: str, settings: Settings | None = None) -> Path:
    if not isinstance(index_id, str) or not _INDEX_ID.match(index_id) or ".." in index_id:
        raise NotFoundError(f"unknown index {str(index_id)[:80]!r} (see `prunelens indexes`)")
    return indexes_root(settings) / index_id


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def _corpus_identity(corpus: str) -> str:
    if corpus.strip().lower().startswith(FILE_PREFIX):
        path = Path(corpus.strip()[len(FILE_PREFIX):].strip()).expanduser()
        try:
            return "file-sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise UserError(f"{path}: cannot read the corpus file ({exc.strerror})") from exc
    return corpus.strip().lower()


def index_id(request: IndexRequest, model: str) -> str:
    """The id of the index ``request`` builds on ``model`` with the current code."""
    identity = {**request.identity(), "model": model, "corpus": _corpus_identity(request.corpus),
                "code_version": code_version()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    corpus = "file" if request.corpus.strip().lower().startswith(FILE_PREFIX) else _slug(request.corpus)
    return f"{_slug(Path(model).name)}-{corpus}-{request.tokens // 1000}k-{digest}"


def index_exists(index_id_: str, settings: Settings | None = None) -> bool:
    return (index_dir(index_id_, settings) / MANIFEST).is_file()


def read_index_manifest(index_id_: str, settings: Settings | None = None) -> dict:
    path = index_dir(index_id_, settings) / MANIFEST
    if not path.is_file():
        raise NotFoundError(f"unknown index {index_id_!r} (see `prunelens indexes`)")
    return json.loads(path.read_text(encoding="utf-8"))


def list_indexes(model: str | None = None, settings: Settings | None = None) -> list[dict]:
    """Complete indexes, newest first: {id, model, variants, corpus, tokens, created, stale}."""
    root = indexes_root(settings)
    rows = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".") or not (path / MANIFEST).is_file():
                continue  # staging folders of builds in progress (or killed)
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
            if model is not None and manifest["model"] != model:
                continue
            rows.append({
                "id": manifest["id"], "model": manifest["model"], "variants": manifest["variants"],
                "corpus": manifest["request"]["corpus"], "tokens": manifest["tokens"],
                "created": manifest["created"], "stale": manifest["code_version"] != code_version(),
            })
    return sorted(rows, key=lambda row: (row["created"], row["id"]), reverse=True)


def latest_index(model: str, variant: str | None = None, settings: Settings | None = None) -> str | None:
    """The newest current (not stale) index of ``model`` that holds ``variant`` (if given)."""
    for row in list_indexes(model, settings):
        if not row["stale"] and (variant is None or variant in row["variants"]):
            return row["id"]
    return None


def discard_partial(index_id_: str, settings: Settings | None = None) -> None:
    """Remove what a killed build of ``index_id_`` left in staging (never a finished index)."""
    discard_staging(index_dir(index_id_, settings))
