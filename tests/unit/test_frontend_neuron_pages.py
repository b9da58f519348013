"""The neuron page and "what pruning changed" through Streamlit's AppTest, against the real API
in-process: a tiny LLaMA, a real Wanda variant and a real index built through POST /index/jobs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from frontend import ui
from frontend.client import BackendClient
from frontend.views.neuron_view import NOISE_LABEL
from tests.unit.test_api_neurons import SMALL_INDEX, save_tiny

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

APP = str(Path(__file__).resolve().parents[2] / "frontend" / "app.py")


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from backend.config import get_settings

    cache = tmp_path_factory.mktemp("neuron-pages")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELENS_CACHE_DIR", str(cache))
        patch.delenv("PRUNELENS_API_TOKEN", raising=False)
        get_settings.cache_clear()
        model = save_tiny(cache)
        app = create_app(ApiSettings(cache_dir=cache, default_model=model, device="cpu"))
        with TestClient(app) as http:
            api = BackendClient("http://testserver", http=http)
            accepted = api.create_variant({"method": "wanda", "calibration": "lambada", "sparsity": "0.5",
                                           "nsamples": 4, "seqlen": 32})
            variant = list(api.job_events(accepted["job"]["id"]))[-1]["result"]["variant_id"]
            accepted = api.create_index({**SMALL_INDEX, "variants": [variant]})
            events = list(api.job_events(accepted["job"]["id"]))
            assert events[-1]["state"] == "succeeded", events[-1]
            envelope = api.nsa({"text": "A slow but beautiful film.", "words": ["slow", "beautiful"], "top_k": 4})
            yield {"api": api, "model": model, "variant": variant, "index": events[-1]["result"]["index_id"],
                   "nsa": envelope}
        get_settings.cache_clear()


@pytest.fixture
def dashboard(backend):
    import streamlit as st

    st.cache_data.clear()
    ui.use_client(backend["api"])
    yield lambda: AppTest.from_file(APP, default_timeout=60)
    ui.use_client(None)


def _open(at: AppTest, page: str, **params) -> AppTest:
    at.switch_page(f"pages/{page}.py")
    for key, value in params.items():
        at.query_params[key] = str(value)
    return at.run()


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _html(at: AppTest) -> str:
    return "".join(element.value for element in at.get("html"))


def _frame(at: AppTest, *columns: str):
    for element in at.dataframe:
        if all(column in element.value.columns for column in columns):
            return element.value
    raise AssertionError(f"no dataframe with columns {columns}")


def test_neuron_page_from_a_shared_link_shows_both_models_on_the_dense_scale(dashboard, backend):
    top = min(backend["nsa"]["result"]["neurons"], key=lambda n: n["rank"])
    layer, neuron = top["layer"], top["index"]
    at = _open(dashboard(), "neuron", model=backend["model"], index=backend["index"], layer=layer,
               neuron=neuron, variant=backend["variant"])
    _clean(at)
    page = backend["api"].neuron(backend["model"], layer, neuron, variant=backend["variant"], index=backend["index"])
    html = _html(at)
    # Top examples of both models, each example token outlined, and the re-read rows.
    assert html.count("pl-tok pl-focus") == len(page["dense"]["top_positive"]) + len(page["variant"]["top_positive"])
    scale = max(abs(page["dense"]["stats"]["max"]), abs(page["dense"]["stats"]["min"]))
    assert f"{scale:+.4g}" in html  # the one legend scale is the dense model's
    assert html.count("<th") >= 2 * len(page["variant"]["dense_top_reread"])
    figures = [chart.proto.spec for chart in at.get("plotly_chart")]
    assert any('"type":"log"' in spec.replace(" ", "") and "dense" in spec and backend["variant"] in spec
               for spec in figures)  # the two density histograms overlaid
    agreement = _frame(at, "split-half floor (dense vs dense)")
    assert set(agreement["reading"]) & {NOISE_LABEL, "changed (below the floor)"}
    assert list(_frame(at, "dense token")["effect"])[:1] == ["promoted"]  # logit effects
    nsa = _frame(at, "held-out excess drop")
    assert backend["nsa"]["id"] in nsa.iloc[0]["result"]  # links to the NSA result in the explorer
    assert (at.query_params["layer"], at.query_params["neuron"]) in ((str(layer), str(neuron)),
                                                                      ([str(layer)], [str(neuron)]))

    at.text_area(key="np_text").input("A slow but beautiful film.")
    at.button(key="np_test").click()
    at.run()
    _clean(at)
    answer = at.session_state["np_test_answer"]
    assert "".join(answer["tokens"]) == "A slow but beautiful film."  # every token, start token left out
    tested = at.get("html")[-1].value  # the last fragment of the page: your text
    assert tested.count("<td") == 2 * len(answer["tokens"])  # a dense row and a variant row, token by token


def test_neuron_page_dense_only_and_out_of_range_neuron(dashboard, backend):
    at = _open(dashboard(), "neuron", model=backend["model"], index=backend["index"], layer=0, neuron=2)
    _clean(at)
    assert "split-half floor (dense vs dense)" not in "".join(str(f.value.columns) for f in at.dataframe)
    at = _open(dashboard(), "neuron", model=backend["model"], index=backend["index"], layer=0, neuron=9999)
    assert not at.exception and any("9999" in e.value for e in at.error)


def test_what_changed_ranks_neurons_with_links_divergence_and_search(dashboard, backend):
    at = _open(dashboard(), "changed", model=backend["model"], index=backend["index"], variant=backend["variant"])
    _clean(at)
    table = _frame(at, "neuron page", "correlation", "profile floor")
    assert len(table) == 50
    assert list(table["correlation"].dropna()) == sorted(table["correlation"].dropna())
    first = table.iloc[0]
    assert re.search(rf"neuron\?.*layer={first['layer']}&neuron={first['neuron']}", first["neuron page"])
    assert "KL" in _html(at) and _frame(at, "mean KL (nats)") is not None

    at.text_input(key="ch_layer").input("1")
    at.run()
    _clean(at)
    assert set(_frame(at, "neuron page", "correlation")["layer"]) == {1}

    page = backend["api"].neuron(backend["model"], 0, 5, index=backend["index"])
    example = page["dense"]["top_positive"][0]
    token = example["tokens"][example["focus"]].strip()
    at.text_input(key="ch_token").input(token or "the")
    at.run()
    _clean(at)
    assert _frame(at, "top examples on the token") is not None or token == ""


def test_explorer_neuron_numbers_link_to_the_neuron_page(dashboard, backend):
    at = _open(dashboard(), "explorer", model=backend["model"], result=backend["nsa"]["id"])
    _clean(at)
    table = _frame(at, "neuron page", "rank")
    assert all(f"layer={lay}&neuron={neu}" in link
               for link, lay, neu in zip(table["neuron page"], table["layer"], table["neuron"], strict=True))
    assert any("over a whole corpus" in m.value for m in at.markdown)
