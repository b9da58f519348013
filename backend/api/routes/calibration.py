"""GET /calibration-sets: the named text sets a prune request may calibrate on."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.schemas import CalibrationSet

router = APIRouter(tags=["calibration"])


@router.get(
    "/calibration-sets", response_model=list[CalibrationSet], summary="Calibration text sets"
)
async def list_calibration_sets() -> list[dict]:
    from backend.data.sources import FILE_PREFIX, list_text_sets

    # file:PATH reads the server's disk: offered on the command line, never over HTTP.
    return [row for row in list_text_sets() if not row["name"].startswith(FILE_PREFIX)]
