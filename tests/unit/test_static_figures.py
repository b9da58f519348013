"""Static figures (SVG, PDF): each view's file parses, renders non-blank with its colours, carries
its text and embeds its fonts; `prunelens figure` writes one from a stored NSA result."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pypdfium2
import pytest

from backend.cli import main
from frontend.views import figures, static_figures
from frontend.views.heatmap import NEGATIVE_RGB, POSITIVE_RGB, HeatmapRow
from tests.unit.test_frontend_views import _evaluation, _nsa_result

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(data: bytes) -> str:
    """Parse the SVG (fails on malformed XML) and return the strings it draws: glyphs are paths,
    and matplotlib keeps each string in a comment beside them."""
    root = ET.fromstring(data, parser=ET.XMLParser(target=ET.TreeBuilder(insert_comments=True)))
    assert root.tag == f"{SVG}svg"
    assert root.find(f".//{SVG}defs") is not None and root.findall(f".//{SVG}path")  # glyphs as paths
    assert not root.findall(f".//{SVG}text")  # no text left to a font the reader may lack
    return " ".join(node.text or "" for node in root.iter() if node.tag is ET.Comment)


def pdf_page(data: bytes) -> tuple[np.ndarray, str]:
    """First page rendered (RGB array) and its extracted text."""
    assert data.startswith(b"%PDF")
    document = pypdfium2.PdfDocument(data)
    page = document[0]
    pixels = np.asarray(page.render(scale=2).to_pil().convert("RGB"))
    text = page.get_textpage().get_text_range()
    return pixels, text


def share_of(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> float:
    return float((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=-1) <= tolerance).mean())


def check_files(figure, words: list[str], colours: list[tuple[int, int, int]] = ()) -> None:
    svg = static_figures.figure_bytes(figure, "svg")
    drawn = svg_texts(svg)
    pdf = static_figures.figure_bytes(figure, "pdf")
    assert b"/FontFile2" in pdf  # TrueType font embedded (pdf.fonttype 42)
    pixels, text = pdf_page(pdf)
    non_white = float((pixels.min(axis=-1) < 245).mean())
    assert 0.005 < non_white < 0.9, non_white  # something drawn, not a solid block
    for word in words:
        assert word in drawn, (word, drawn[:300])
        assert word in text, (word, text[:300])
    for rgb in colours:
        assert share_of(pixels, rgb) > 0.0005, rgb


def test_heatmap_figure_has_every_row_token_and_the_signed_colours():
    result = _nsa_result()
    figure = static_figures.neuron_heatmap_static(result, 0, 1, 5)
    # dense -2.0 on scale 2 is full blue; v-b's +1.2/-2.5 include saturated cells too
    check_files(figure, ["dense", "wanda 0.5 · c4", "good", "film", "layer 1, neuron 5"], [NEGATIVE_RGB])
    assert static_figures.neuron_heatmap_static(result, 0, 9, 9) is None


def test_heatmap_start_token_is_grey_not_coloured():
    tokens = ["", "up"]
    grey = static_figures.heatmap_figure(tokens, [HeatmapRow("dense", [5.0, 1.0])], 1.0)
    pixels, _ = pdf_page(static_figures.figure_bytes(grey, "pdf"))
    assert share_of(pixels, POSITIVE_RGB) > 0.0005  # "up" at +1.0 of scale 1: saturated red
    assert share_of(pixels, (217, 217, 217), tolerance=3) > 0.0005  # the start token's grey cell
    assert share_of(pixels, NEGATIVE_RGB) == 0.0


def test_activation_loss_figure():
    figure = static_figures.activation_loss_for_variant(_nsa_result(), "v-a")
    check_files(figure, ["neuron index", "layer", "where activation was lost", "100%"])
    assert static_figures.activation_loss_for_variant(_nsa_result(), "nope") is None


def test_accuracy_sparsity_figure_draws_each_category_and_task():
    rows = [_evaluation("sst2", "", 0.9), _evaluation("sst2", "v1", 0.8, sparsity="0.5"),
            _evaluation("rte", "", 0.6), _evaluation("rte", "v2", 0.55, sparsity="2:4")]
    tasks = [{"name": "sst2", "category_title": "Sentiment"}, {"name": "rte", "category_title": "Reasoning"}]
    frame = figures.accuracy_by_sparsity(rows, tasks)
    check_files(static_figures.accuracy_sparsity_static(frame),
                ["Sentiment", "Reasoning", "sst2", "rte N:M", "accuracy", "50%"])
    empty = static_figures.accuracy_sparsity_static(pd.DataFrame(columns=frame.columns))
    assert "no evaluations" in svg_texts(static_figures.figure_bytes(empty, "svg"))


def test_verdict_card_takes_a_plain_dict():
    card = {"title": "Did pruning remove the sentiment circuit?", "verdict": "Yes: 2.3x the random drop",
            "rows": [["drop on influential words", "41% (random 18%, 95% CI 12-24%)"], ["texts", "8"]],
            "note": "held-out texts"}
    check_files(static_figures.verdict_card_static(card),
                ["sentiment circuit", "2.3x the random drop", "random 18%", "held-out texts"])


def test_figure_formats_are_refused_by_name():
    with pytest.raises(ValueError, match="svg or pdf"):
        static_figures.figure_bytes(static_figures.verdict_card_static({}), "png")


@pytest.fixture
def stored_result(isolated_cache) -> str:
    from backend.api.settings import api_settings
    from backend.nsa.results_store import NsaResultStore

    store = NsaResultStore(api_settings().nsa_db)
    store.put("abc123", {"model": "m", "texts": ["good film bad"], "variants": ["v-a", "v-b"]}, _nsa_result())
    return "abc123"


def test_cli_figure_writes_pdf_and_svg(stored_result, tmp_path, capsys):
    pdf_path, svg_path = tmp_path / "fig.pdf", tmp_path / "loss.svg"
    assert main(["figure", stored_result, "--neuron", "1:5", "--out", str(pdf_path)]) == 0
    pixels, text = pdf_page(pdf_path.read_bytes())
    assert "layer 1, neuron 5" in text and share_of(pixels, NEGATIVE_RGB) > 0.0005
    assert main(["figure", stored_result, "--loss", "v-b", "--out", str(svg_path)]) == 0
    assert "wanda 0.5 · sst2" in svg_texts(svg_path.read_bytes())
    assert main(["figure", stored_result, "--neuron", "1:5", "--variants", "v-b", "--text", "0",
                 "--out", str(pdf_path)]) == 0
    assert "c4" not in pdf_page(pdf_path.read_bytes())[1]  # only v-b's row


@pytest.mark.parametrize("argv,needle", [
    (["--neuron", "1-5", "--out", "{tmp}/f.pdf"], "LAYER:INDEX"),
    (["--neuron", "1:5", "--out", "{tmp}/f.png"], ".svg or .pdf"),
    (["--neuron", "7:7", "--out", "{tmp}/f.pdf"], "not recorded"),
    (["--loss", "v-z", "--out", "{tmp}/f.pdf"], "not in this NSA result"),
    (["--out", "{tmp}/f.pdf"], "--neuron"),
    (["--neuron", "1:5", "--out", "{tmp}/no/f.pdf"], "does not exist"),
])
def test_cli_figure_bad_input(stored_result, tmp_path, capsys, argv, needle):
    assert main(["figure", stored_result, *[part.format(tmp=tmp_path) for part in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not list(tmp_path.glob("*.pdf")) and not list(tmp_path.glob(".*tmp"))


def test_cli_figure_unknown_result(isolated_cache, tmp_path, capsys):
    assert main(["figure", "nosuchresult", "--neuron", "1:5", "--out", str(tmp_path / "f.pdf")]) == 2
    assert re.search(r"unknown NSA result 'nosuchresult'", capsys.readouterr().err)


# ----------------------------------------------------------------------------- display helpers


def test_drops_read_as_percentages_and_far_negative_ones_as_fires_more():
    from frontend.views.display import format_drop, format_percent

    assert format_drop(0.4931) == "49.3%"
    assert format_drop(-0.25) == "-25.0%"
    assert format_drop(-1.0) == "-100.0%"
    assert format_drop(-4.9263) == "fires 5.9\u00d7 more"  # |pruned| / |dense| = 1 - drop
    assert format_drop(None) == "" and format_drop(float("nan")) == ""
    assert format_percent(0.5) == "50.0%"


def test_readable_tables_have_no_raw_keys():
    from frontend.views import nsa_view
    from frontend.views.display import DROP_KEYS, readable_neuron_table, readable_table

    summary = nsa_view.variant_summary(_nsa_result()).drop(columns=["id"])
    shown = readable_table(summary, drops=DROP_KEYS, percents=["excess_drop"])
    assert not {"drop_influential", "baseline_all_neurons", "excess_drop"} & set(shown.columns)
    assert shown["drop on influential words (%)"].tolist() == ["40.0%", "20.0%"]
    neurons = readable_neuron_table(nsa_view.neuron_table(_nsa_result()))
    assert neurons["drop (%) · wanda 0.5 · c4"].tolist() == ["50.0%", ""]  # a missing drop stays blank
    assert neurons["weights removed (%) · wanda 0.5 · sst2"].tolist() == ["40.0%", "50.0%"]


def test_calibration_sets_offline_first_and_hub_ones_marked_or_withheld():
    from frontend.views.display import calibration_choices

    rows = [{"name": "c4", "offline": False, "available": False}, {"name": "lambada", "offline": True},
            {"name": "wikitext2", "offline": False, "available": True}, {"name": "sst2", "offline": True}]
    names, labels, unavailable = calibration_choices(rows)
    assert names == ["lambada", "sst2", "wikitext2"] and unavailable == ["c4"]
    assert labels["wikitext2"] == "wikitext2 (needs the model hub)" and labels["sst2"] == "sst2"
