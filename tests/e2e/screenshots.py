"""Screenshots of every dashboard page for the docs, from a running dashboard (e.g. `prunelens demo`).

    python -m tests.e2e.screenshots http://127.0.0.1:8501 http://127.0.0.1:8000 [docs/screenshots]

Uses Debian's chromium through Playwright (never a downloaded browser). The explorer and the
calibration page are opened on the newest stored NSA result that compares variants.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from frontend.client import BackendClient
from tests.e2e.servers import CHROMIUM_ARGS, REPO, chromium_path

VIEWPORT = {"width": 1400, "height": 1500}


def wait_until_drawn(page, timeout_s: float = 180.0) -> None:
    """Until the page script has finished and nothing is a placeholder: no status widget
    ("Running… Stop") and no skeletons, three checks in a row (a slow machine draws late)."""
    quiet, deadline = 0, time.monotonic() + timeout_s
    while quiet < 3 and time.monotonic() < deadline:
        page.wait_for_timeout(1_000)
        busy = page.get_by_test_id("stStatusWidget").count() + page.get_by_test_id("stSkeleton").count()
        quiet = 0 if busy else quiet + 1


def shoot(dashboard: str, backend: str, target: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    api = BackendClient(backend)
    results = [row for row in api.nsa_results() if row["variants"]]
    result = results[0]["id"] if results else None
    pages = {
        "explorer": f"{dashboard}/" + (f"?result={result}" if result else ""),
        "attribute": f"{dashboard}/attribute" + (f"?result={result}" if result else ""),
        "calibration": f"{dashboard}/calibration",
        "accuracy": f"{dashboard}/accuracy",
        "jobs": f"{dashboard}/jobs",
    }
    target.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        browser = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        try:
            page = browser.new_page()
            for name, url in pages.items():
                page.goto(url)
                page.get_by_test_id("stSidebarNav").wait_for(timeout=60_000)
                wait_until_drawn(page)
                if page.get_by_test_id("stPlotlyChart").count():
                    page.locator("[data-testid=stPlotlyChart] .main-svg >> visible=true").first.wait_for(timeout=30_000)
                page.wait_for_timeout(2_000)
                path = target / f"{name}.png"
                page.screenshot(path=str(path))
                written.append(path)
        finally:
            browser.close()
    return written


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else REPO / "docs" / "screenshots"
    for written_path in shoot(sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/"), out):
        print(written_path)
