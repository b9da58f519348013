"""GET /variants/{id}/export: the variant as a standard checkpoint, streamed as a zip.

The checkpoint is written by the same function as ``prunelens export`` into a private staging
folder under ``<cache>/exports/`` (on the server's disk, never a path the client names), zipped
(stored, not deflated: safetensors barely compress), streamed, and removed after the response.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from backend.api.routes.variants import VariantId
from backend.api.state import State

router = APIRouter(tags=["variants"])


def zip_folder(folder: Path, archive_path: Path) -> None:
    """Every file of ``folder`` under a top-level ``<folder name>/`` in the archive."""
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=f"{folder.name}/{path.relative_to(folder)}")


@router.get(
    "/variants/{variant_id}/export",
    response_class=FileResponse,
    summary="Download a variant as a checkpoint folder (zip)",
    responses={200: {"content": {"application/zip": {}},
                     "description": "config, tokenizer, safetensors weights and README.md model card"}},
)
def export_variant_endpoint(
    variant_id: VariantId,
    state: State,
    export_format: Annotated[
        Literal["hf", "compressed-tensors"],
        Query(alias="format", description="hf (dense safetensors) or compressed-tensors (bitmask sparse)"),
    ] = "hf",
) -> FileResponse:
    from backend.export.checkpoint import export_variant
    from backend.pruning.variants import read_manifest

    manifest = read_manifest(variant_id, state.settings)  # 404 before any work
    exports_root = state.settings.cache_dir / "exports"
    exports_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=exports_root))
    try:
        with state.gate.hold(f"export {variant_id}"):
            loaded = state.pool.get(manifest["base_model"])
            result = export_variant(variant_id, work / variant_id, export_format=export_format,
                                    loaded=loaded, settings=state.settings)
        archive = work / f"{variant_id}-{export_format}.zip"
        zip_folder(result.path, archive)
        shutil.rmtree(result.path)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return FileResponse(archive, media_type="application/zip", filename=archive.name,
                        background=BackgroundTask(shutil.rmtree, work, ignore_errors=True))
