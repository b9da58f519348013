"""The dashboard in a real browser: backend (embedded model, CPU) and Streamlit on loopback,
headless Debian chromium through Playwright. Opens the explorer from a shared URL, checks the
heatmap shows the text's tokens, uploads a text file on the Attribute page and sees its result.
Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
import time

import pytest

from tests.e2e.servers import (
    CHROMIUM_ARGS,
    REPO,
    chromium_path,
    isolated_cache,
    running_servers,
    wait_for_job,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

ARTIFACTS = REPO / "test-artifacts"
TEXT = "The plot was painfully slow, but the acting was beautiful."
UPLOAD = "A warm, funny and moving film.\n\nDull, lifeless and far too long.\n"
# Four texts with their own words: the result is cross-fitted (held-out figures).
MORE_TEXTS = ["A warm, funny and moving film.", "Dull, lifeless and far too long.",
              "An honest and beautiful story, quietly told."]
TEXT_WORDS = [["painfully", "beautiful"], ["warm", "funny"], ["Dull", "lifeless"], ["honest", "beautiful"]]


def _untouched_variant(cache) -> str:
    """A variant with nothing pruned (written into the server's cache): its excess drop is 0, so the
    dashboard must call it not distinguishable from the baseline."""
    import torch

    from backend.config import Settings
    from backend.models.embedded import EMBEDDED_NAME
    from backend.pruning.variants import write_variant

    write_variant("untouched", {"base_model": EMBEDDED_NAME, "method": "none", "calibration": None, "sparsity": "0",
                                "achieved_sparsity": {"overall": 0.0, "per_linear": {}}},
                  masks={"model.layers.0.mlp.up_proj.weight": torch.zeros(1536, 576, dtype=torch.bool)},
                  settings=Settings(cache_dir=cache))
    return "untouched"


def _requirements() -> str | None:
    if chromium_path() is None:
        return "Debian's chromium is not installed (apt-get install chromium); browsers are never downloaded"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))
def test_shared_explorer_link_and_uploaded_attribution_in_chromium(tmp_path, embedded):
    # `embedded` converts the model into models_cache on a fresh clone (CI) before the
    # servers start; the servers then share that checkpoint.
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    started = time.monotonic()

    def phase(name: str) -> None:
        print(f"[e2e] {time.monotonic() - started:6.1f} s  {name}", flush=True)

    cache = isolated_cache(tmp_path)
    untouched = _untouched_variant(cache)
    with running_servers(cache, ARTIFACTS / "e2e-logs") as (api, dashboard):
        phase("backend and dashboard up")
        # A real variant (magnitude: no calibration pass, seconds on CPU) and a stored NSA result to
        # share (the user's words: no generation needed).
        accepted = api.create_variant({"method": "magnitude", "sparsity": "0.5"})
        job = wait_for_job(api, accepted["job"]["id"])
        assert job["state"] == "succeeded", job
        variant = job["result"]["variant_id"]
        phase(f"variant {variant} pruned")
        envelope = api.nsa({"texts": [TEXT, *MORE_TEXTS], "text_words": TEXT_WORDS, "variants": [variant, untouched],
                            "top_k": 5})
        result = envelope["result"]
        top = min(result["neurons"], key=lambda n: n["rank"])
        phase("NSA result stored")
        shared = (f"{dashboard}/?result={envelope['id']}&layer={top['layer']}&neuron={top['index']}"
                  f"&variants={variant}")

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=chromium_path(), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
            try:
                page = browser.new_page()
                page.goto(shared)
                expect(page.get_by_test_id("stSidebarNav").get_by_text("Neuron explorer")).to_be_visible(
                    timeout=60_000)  # the app's own navigation, not a bare page script
                heatmap = page.locator(".pl-heatmap").first
                expect(heatmap).to_be_visible(timeout=60_000)
                rows = heatmap.locator("tr")
                labels = [rows.nth(i).locator("th").inner_text() for i in range(rows.count())]
                assert labels[:2] == ["dense", "magnitude 0.5"]
                dense_tokens = "".join(
                    cell for line in page.locator(".pl-heatmap table").all()
                    for cell in line.locator("tr").first.locator("td").all_inner_texts())
                assert dense_tokens.replace("\u2205", "") == TEXT  # every token of the text, in order
                hover = heatmap.locator("tr").nth(1).locator("td").nth(1).get_attribute("title")
                assert "magnitude 0.5" in hover and "dense" in hover and "drop" in hover  # exact value + drop
                expect(page.get_by_text(f"layer {top['layer']}, neuron {top['index']}").first).to_be_visible()
                # The held-out headline with its interval; the untouched variant's excess is labelled.
                expect(page.get_by_text("held-out excess drop").first).to_be_visible(timeout=30_000)
                expect(page.get_by_text("not distinguishable from the baseline").first).to_be_visible()
                expect(page.get_by_text("In-sample (neurons selected and measured on the same texts").first
                       ).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "e2e-explorer.png"), full_page=True)
                phase("explorer opened from the shared link")

                # The heatmap as a PDF figure: a real download, whose first page renders with the
                # neuron's title and coloured cells.
                with page.expect_download(timeout=60_000) as download_info:
                    page.get_by_role("button", name="PDF").first.click()
                download = download_info.value
                figure_path = tmp_path / download.suggested_filename
                download.save_as(figure_path)
                assert figure_path.suffix == ".pdf", figure_path
                _check_pdf_figure(figure_path.read_bytes(), f"layer {top['layer']}, neuron {top['index']}")
                phase(f"heatmap downloaded as {figure_path.name}")

                page.goto(f"{dashboard}/attribute")
                page.get_by_text("Upload a file").click()
                upload = tmp_path / "reviews.txt"
                upload.write_text(UPLOAD, encoding="utf-8")
                page.locator("input[type=file]").set_input_files(str(upload))
                expect(page.get_by_text("reviews.txt")).to_be_visible(timeout=30_000)
                page.get_by_role("button", name="Run NSA").click()
                phase("file uploaded, NSA running")
                expect(page.get_by_text("2 text(s)")).to_be_visible(timeout=180_000)
                expect(page.locator(".pl-heatmap").first).to_be_visible(timeout=30_000)
                expect(page.get_by_role("button", name="Heatmaps (HTML)")).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "e2e-attribute.png"), full_page=True)
                phase("attribution of the uploaded file shown")
            finally:
                browser.close()
    assert time.monotonic() - started < 300


def _check_pdf_figure(data: bytes, title: str) -> None:
    import numpy as np
    import pypdfium2

    page = pypdfium2.PdfDocument(data)[0]
    assert title in page.get_textpage().get_text_range()
    pixels = np.asarray(page.render(scale=2).to_pil().convert("RGB"))
    coloured = (pixels.max(axis=-1).astype(int) - pixels.min(axis=-1)) > 60  # saturated heatmap cells
    assert coloured.mean() > 0.001


@pytest.mark.timeout(900)  # the index pass runs the embedded model twice over the corpus on CPU
@pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))
def test_neuron_page_and_what_changed_from_a_real_index_in_chromium(tmp_path, embedded):
    """A small real index (dense + one magnitude variant, 1000 corpus tokens) built through
    POST /index/jobs; the neuron page shows examples and the overlaid histograms, the "what
    changed" page a ranked list whose links open neuron pages."""
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    cache = isolated_cache(tmp_path)
    with running_servers(cache, ARTIFACTS / "e2e-logs-neurons") as (api, dashboard):
        job = wait_for_job(api, api.create_variant({"method": "magnitude", "sparsity": "0.5"})["job"]["id"])
        variant = job["result"]["variant_id"]
        job = wait_for_job(api, api.create_index({"variants": [variant], "tokens": 1000, "max_length": 64,
                                                  "top_k": 5})["job"]["id"], timeout_s=720)
        assert job["state"] == "succeeded", job
        index = job["result"]["index_id"]
        model = api.index(index)["model"]
        ranked = api.changed_neurons(index, variant, limit=10)
        first = ranked[0]
        page_data = api.neuron(model, first["layer"], first["neuron"], variant=variant, index=index)

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=chromium_path(), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1100})
            try:
                page = browser.new_page()
                page.goto(f"{dashboard}/changed?model={model}&index={index}&variant={variant}")
                expect(page.get_by_text("Neurons ranked by change")).to_be_visible(timeout=60_000)
                expect(page.get_by_text("listed neurons changed beyond their split-half floor")).to_be_visible(
                    timeout=60_000)
                expect(page.get_by_text("Mean KL(dense")).to_be_visible()
                # The ranked list, in the API's order, each entry a link to its neuron page.
                top_link = page.get_by_role("link", name=f"layer {first['layer']}, neuron {first['neuron']}").first
                expect(top_link).to_be_visible(timeout=30_000)
                second = ranked[1]
                expect(page.get_by_role("link", name=f"layer {second['layer']}, neuron {second['neuron']}").first
                       ).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "e2e-changed.png"), full_page=True)

                page.goto(top_link.get_attribute("href"))
                expect(page.get_by_text(f"Layer {first['layer']}, neuron {first['neuron']}")).to_be_visible(
                    timeout=60_000)
                examples = page.locator(".pl-example")
                expect(examples.first).to_be_visible(timeout=30_000)
                top = page_data["dense"]["top_positive"][0]
                assert f"doc {top['document']} \u00b7 tok {top['position']}" in examples.first.inner_text()
                assert examples.count() == len(page_data["dense"]["top_positive"]) + \
                    len(page_data["variant"]["top_positive"])
                histogram = page.locator(".js-plotly-plot").first
                expect(histogram).to_be_visible(timeout=30_000)
                assert histogram.locator("g.trace").count() >= 2  # dense and variant overlaid
                # The verdict against the split-half floor (the folded "how to read" mentions it too).
                expect(page.get_by_text(re.compile("change figure is (below|within)")).first).to_be_visible()
                page.screenshot(path=str(ARTIFACTS / "e2e-neuron.png"), full_page=True)
            finally:
                browser.close()
