"""Every dashboard page through Streamlit's AppTest, against the real FastAPI app in-process.

The backend serves a tiny random LLaMA (tests/conftest.py) from an isolated cache: two real
Wanda variants that differ only in their calibration set (pruned through POST /variants), one
real NSA result comparing them, and evaluation rows written through the results store's own
API. The dashboard's client is the real one, wired to FastAPI's TestClient.
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from frontend import ui
from frontend.client import BackendClient
from frontend.views.heatmap import display_token

# The client sets per-request timeouts (long for NSA); Starlette's TestClient ignores them, and says so.
pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

APP = str(Path(__file__).resolve().parents[2] / "frontend" / "app.py")
TEXT = "The movie was painfully slow, but the acting was beautiful."
TIMEOUT_S = 60


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The real API on a tiny model, with two variants, one NSA result and stored accuracies."""
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from backend.config import get_settings
    from backend.evaluation.store import ResultKey, ResultsStore
    from tests.conftest import tiny_loaded

    cache = tmp_path_factory.mktemp("frontend-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELENS_CACHE_DIR", str(cache))
        patch.delenv("PRUNELENS_API_TOKEN", raising=False)
        patch.delenv("PRUNELENS_RESULTS_URL", raising=False)
        get_settings.cache_clear()
        app = create_app(ApiSettings(cache_dir=cache), loaded=tiny_loaded("llama"))
        with TestClient(app) as http:
            api = BackendClient("http://testserver", http=http)
            variants = {}
            for calibration in ("sst2", "lambada"):
                accepted = api.create_variant({"method": "wanda", "calibration": calibration, "sparsity": "0.5",
                                               "nsamples": 4, "seqlen": 32})
                events = list(api.job_events(accepted["job"]["id"]))
                assert events[-1]["state"] == "succeeded", events[-1]
                variants[calibration] = events[-1]["result"]["variant_id"]
            envelope = api.nsa({"text": TEXT, "variants": list(variants.values()), "top_k": 6})
            store = ResultsStore.from_settings()
            # Per-example scores on the same 20 examples: dense right on 15; the sst2 variant loses one
            # of them (not distinguishable), the lambada one loses 9 (lower).
            correct = {None: [1] * 15 + [0] * 5, variants["sst2"]: [0] + [1] * 14 + [0] * 5,
                       variants["lambada"]: [0] * 9 + [1] * 6 + [0] * 5}
            accuracies = {variant_id: sum(scores) / 20 for variant_id, scores in correct.items()}
            for variant_id, scores in correct.items():
                if variant_id is not None:
                    store.record_variant(api.variant(variant_id))
                accuracy = accuracies[variant_id]
                store.put(ResultKey("tiny-llama", variant_id or "", "sst2", 20, "packaged", "test", 1),
                          n_examples=20, outcomes={"acc": dict(enumerate(map(float, scores)))},
                          metrics={"acc,none": accuracy,
                                   "acc_stderr,none": (accuracy * (1 - accuracy) / 19) ** 0.5})
            yield {"api": api, "app": app, "variants": variants, "nsa": envelope, "accuracies": accuracies}
        get_settings.cache_clear()


@pytest.fixture
def dashboard(backend):
    """A fresh AppTest of the whole app (st.navigation) talking to the in-process backend."""
    import streamlit as st

    st.cache_data.clear()
    ui.use_client(backend["api"])
    yield lambda: AppTest.from_file(APP, default_timeout=TIMEOUT_S)
    ui.use_client(None)


def _open(at: AppTest, page: str, **params) -> AppTest:
    """Open ``page`` the way a shared link does: that page first, with the link's query parameters."""
    at.switch_page(f"pages/{page}.py")
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def _param(at: AppTest, key: str) -> str:
    value = at.query_params[key]
    return value[0] if isinstance(value, list) else value


def _frame(at: AppTest, *columns: str):
    """The first dataframe on the page that has these columns (plain dataframes carry no key)."""
    for element in at.dataframe:
        frame = element.value
        if all(column in frame.columns for column in columns):
            return frame
    raise AssertionError(f"no dataframe with columns {columns}")


def _clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _html(at: AppTest) -> str:
    return "".join(element.value for element in at.get("html"))


class _HeatmapRows(HTMLParser):
    """``{row label: [cell texts over all wrapped lines]}`` of heatmap fragments."""

    def __init__(self):
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._label, self._tag, self._text = None, None, ""

    def handle_starttag(self, tag, attrs):
        if tag in ("th", "td"):
            self._tag, self._text = tag, ""

    def handle_endtag(self, tag):
        if tag == "th":
            self._label = self._text
            self.rows.setdefault(self._label, [])
        elif tag == "td":
            self.rows[self._label].append(self._text)
        self._tag = None if tag in ("th", "td") else self._tag

    def handle_data(self, data):
        if self._tag:
            self._text += data


def _heatmap_rows(fragment: str) -> dict[str, list[str]]:
    parser = _HeatmapRows()
    parser.feed(fragment)
    return parser.rows


# --------------------------------------------------------------------------- explorer


def test_explorer_opens_the_shared_view_from_the_url(dashboard, backend):
    result = backend["nsa"]["result"]
    second = sorted(result["neurons"], key=lambda n: n["rank"])[1]
    lambada = backend["variants"]["lambada"]
    at = _open(dashboard(), "explorer", result=backend["nsa"]["id"], layer=str(second["layer"]),
               neuron=str(second["index"]), variants=lambada)
    _clean(at)
    assert not at.error
    assert at.selectbox(key="ex_layer").value == second["layer"]
    assert at.selectbox(key="ex_neuron").value == second["index"]
    assert at.multiselect(key="ex_variant_pick").value == [lambada]
    # Two rows (dense + the one variant in the URL), each showing every token of the text in order:
    # the tokens are slices of the text, so the cells read back as the text itself.
    rows = _heatmap_rows(_html(at))
    assert list(rows) == ["dense", "wanda 0.5 \u00b7 lambada"]
    tokens = [display_token(t) for t in result["texts"][0]["tokens"]]
    assert rows["dense"] == tokens and rows["wanda 0.5 \u00b7 lambada"] == tokens
    assert "".join(t for t in tokens if t != "\u2205") == TEXT
    assert _param(at, "result") == backend["nsa"]["id"] and _param(at, "layer") == str(second["layer"])


def test_explorer_writes_a_new_choice_of_neuron_into_the_url(dashboard, backend):
    result = backend["nsa"]["result"]
    at = _open(dashboard(), "explorer", result=backend["nsa"]["id"])
    keys = [(n["layer"], n["index"]) for n in result["neurons"]]
    layer = at.selectbox(key="ex_layer").value
    other = next(index for lay, index in keys if lay == layer and index != at.selectbox(key="ex_neuron").value)
    at.selectbox(key="ex_neuron").set_value(other).run()
    _clean(at)
    assert _param(at, "neuron") == str(other)
    assert f"neuron {other}" in _html(at)


def test_explorer_shows_the_backends_message_for_an_unknown_result(dashboard):
    at = _open(dashboard(), "explorer", result="0" * 20)
    _clean(at)
    assert any("unknown NSA result" in e.value for e in at.error)


def test_explorer_attributes_a_dataset_sample_or_says_why_it_cannot(dashboard, backend):
    at = _open(dashboard(), "explorer")
    at.radio(key="ex_source").set_value("Dataset sample").run()
    _clean(at)
    if at.error:  # this backend has no GET /samples: one readable message, nothing else breaks
        assert len(at.error) == 1 and "samples" in at.error[0].value
        return
    sample = at.selectbox(key="ex_sample")
    assert len(sample.options) == 10
    at.button(key="ex_run").click().run()
    _clean(at)
    assert at.radio(key="ex_source").value == "Stored NSA result"
    shown = backend["api"].nsa_result(_param(at, "result"))["result"]["texts"][0]["text"]
    assert shown and shown != TEXT


# --------------------------------------------------------------------------- attribute


def test_attribute_runs_on_pasted_text_then_reruns_with_edited_words(dashboard, backend):
    at = _open(dashboard(), "attribute")
    at.text_area(key="at_text").set_value("A gripping, beautiful film with a dull ending.")
    at.button(key="at_run").click().run()
    _clean(at)
    assert not at.error
    first = at.session_state["at_result"]
    sources = set(_frame(at, "word", "source")["source"])
    assert sources and all(source == "model" or source.startswith("fallback:") for source in sources)
    labels = [button.proto.label for button in at.get("download_button")]
    assert labels == ["SVG", "PDF", "Result (JSON)", "Neurons (CSV)", "Heatmaps (HTML)"]
    edit = next(widget for widget in at.text_input if widget.key.startswith("at_edit_"))
    edit.set_value("gripping, dull").run()
    at.button(key="at_rerun").click().run()
    _clean(at)
    second = at.session_state["at_result"]
    assert second != first
    rerun_words = _frame(at, "word", "source")
    assert list(rerun_words["word"]) == ["gripping", "dull"] and set(rerun_words["source"]) == {"user"}
    envelope = backend["api"].nsa_result(second)
    assert envelope["request"]["words"] == ["gripping", "dull"]


def backend_result(at: AppTest) -> dict:
    return ui.client().nsa_result(at.session_state["at_result"])["result"]


def test_attribute_runs_over_an_uploaded_file(dashboard):
    at = _open(dashboard(), "attribute")
    at.radio(key="at_mode").set_value("Upload a file").run()
    at.file_uploader(key="at_file").set_value(
        ("reviews.txt", b"A warm and funny film.\n\nDull, lifeless and far too long.", "text/plain"))
    at.button(key="at_run").click().run()
    _clean(at)
    assert not at.error
    assert any("2 text(s)" in header.value for header in at.subheader)
    result = backend_result(at)
    assert [t["text"] for t in result["texts"]] == ["A warm and funny film.", "Dull, lifeless and far too long."]


def test_attribute_shows_a_bad_upload_as_a_message(dashboard):
    at = _open(dashboard(), "attribute")
    at.radio(key="at_mode").set_value("Upload a file").run()
    at.file_uploader(key="at_file").set_value(("table.csv", b"review,stars\ngood,5\n", "text/csv"))
    at.button(key="at_run").click().run()
    _clean(at)
    assert len(at.error) == 1 and "text" in at.error[0].value


# --------------------------------------------------------------------------- calibration


def test_calibration_puts_variants_that_differ_only_in_calibration_in_columns(dashboard, backend):
    at = _open(dashboard(), "calibration", result=backend["nsa"]["id"])
    _clean(at)
    assert not at.error
    columns = [h.value for h in at.subheader if h.value in backend["variants"]]
    assert sorted(columns) == ["lambada", "sst2"]
    accuracies = backend["accuracies"]
    tables = [e.value for e in at.dataframe if "\u0394 accuracy" in e.value.columns]
    assert len(tables) == 2
    for calibration, table in zip(columns, tables, strict=True):
        variant_id = backend["variants"][calibration]
        row = table.set_index("task").loc["sst2"]
        assert row["dense"] == accuracies[None] and row["accuracy"] == accuracies[variant_id]
        assert row["\u0394 accuracy"] == pytest.approx(accuracies[variant_id] - accuracies[None])
        half_width = 1.96 * (accuracies[variant_id] * (1 - accuracies[variant_id]) / 19) ** 0.5
        assert row["accuracy 95% CI"] == (f"[{accuracies[variant_id] - half_width:.3f}, "
                                          f"{accuracies[variant_id] + half_width:.3f}]")
        assert row["verdict"] == {"sst2": "not distinguishable", "lambada": "lower"}[calibration]
    assert any("not distinguishable" in caption.value for caption in at.caption)
    # Each column draws the same neuron: dense + its own variant, on the dense model's scale.
    assert _html(at).count("<table") >= 2


# --------------------------------------------------------------------------- accuracy


def test_accuracy_page_draws_the_stored_results(dashboard, backend):
    at = _open(dashboard(), "accuracy")
    _clean(at)
    assert not at.error
    # task x calibration: one stored result per cell here, so each cell is that result's accuracy.
    table = at.dataframe[0].value.set_index("task")
    for calibration, variant_id in backend["variants"].items():
        assert table.loc["sst2", calibration] == pytest.approx(backend["accuracies"][variant_id])
    downloads = [button.proto.label for button in at.get("download_button")]
    assert downloads == ["Download CSV", "SVG", "PDF"]  # the table, then the plot as figures
    intervals = at.dataframe[1].value.set_index("task")  # after the table: intervals, then differences
    assert intervals.loc["sst2", "dense"].startswith("[0.5")  # 0.75 ± 1.96·0.0993
    differences = at.dataframe[2].value.set_index("task")
    assert differences.loc["sst2", "dense"] == ""  # the reference
    assert differences.loc["sst2", "sst2"].endswith("not distinguishable")
    assert differences.loc["sst2", "lambada"].endswith("lower")
    lines = at.get("plotly_chart")
    assert len(lines) == 1  # accuracy vs sparsity
    assert at.selectbox(key="acc_metric").options[0] == "accuracy (%)"  # not lm-eval's "acc,none"


def test_accuracy_page_asks_for_the_task_of_a_per_task_table(dashboard, backend):
    at = _open(dashboard(), "accuracy", kind="model-calibration", task="sst2")
    _clean(at)
    assert at.selectbox(key="acc_task").value == "sst2"
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["tiny-llama", "sst2"] == pytest.approx(backend["accuracies"][backend["variants"]["sst2"]])


# --------------------------------------------------------------------------- jobs


def test_jobs_page_creates_a_variant_and_shows_failures_with_their_message(dashboard, backend):
    from backend.jobs import FAILED

    store = backend["app"].state.api.jobs.store
    failed = store.create("prune", {"method": "ria", "sparsity": "0.5", "calibration": "c4"})
    store.finish(failed.id, FAILED, message="failed", error="c4 is not available offline")
    at = _open(dashboard(), "jobs")
    _clean(at)
    assert any("c4 is not available offline" in e.value for e in at.error)
    at.text_input(key="jobs_sparsity").set_value("2:4")
    at.number_input(key="jobs_nsamples").set_value(2)
    at.number_input(key="jobs_seqlen").set_value(16)
    next(b for b in at.button if b.label == "Create variant").click().run()
    _clean(at)
    shown = [e.value for e in at.error] + [w.value for w in at.warning] + [i.value for i in at.info]
    assert any("Prune job" in s.value for s in at.success), shown


def test_jobs_page_cancels_a_waiting_job(dashboard, backend):
    from backend.jobs import CANCELLED

    store = backend["app"].state.api.jobs.store
    waiting = store.create("prune", {"method": "wanda", "sparsity": "0.5", "calibration": "imdb"})
    at = _open(dashboard(), "jobs")  # a row in the table, not in the worker's queue: it waits
    _clean(at)
    at.button(key=f"jobs_cancel_{waiting.id}").click().run()
    _clean(at)
    assert store.get(waiting.id).state == CANCELLED
    assert not [b for b in at.button if b.key == f"jobs_cancel_{waiting.id}"]  # no longer active
    done = _frame(at, "state", "job", "produced")
    assert done.set_index("id").loc[waiting.id, "state"] == "cancelled"


def test_jobs_page_shows_a_refused_request_as_the_backends_message(dashboard):
    at = _open(dashboard(), "jobs")
    at.text_input(key="jobs_sparsity").set_value("1.5")
    next(b for b in at.button if b.label == "Create variant").click().run()
    _clean(at)
    assert len(at.error) >= 1 and any("1.5" in e.value or "sparsity" in e.value for e in at.error)


# --------------------------------------------------------------------------- no backend


@pytest.mark.parametrize("page", ["explorer", "attribute", "calibration", "accuracy", "jobs"])
def test_an_unreachable_backend_is_one_clear_notice_on_every_page(page):
    ui.use_client(BackendClient("http://127.0.0.1:9", token=""))
    try:
        at = _open(AppTest.from_file(APP, default_timeout=TIMEOUT_S), page)
        _clean(at)
        assert len(at.error) == 1 and "Backend unreachable" in at.error[0].value
    finally:
        ui.use_client(None)


def test_an_unexpected_backend_answer_is_a_message_not_a_traceback():
    """A backend that answers garbage (another version, a proxy's page) must not crash a page."""
    import httpx

    def garbage(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json={"status": "ok", "default_model": "m"})
        return httpx.Response(200, json={"unexpected": True})

    http = httpx.Client(base_url="http://odd", transport=httpx.MockTransport(garbage))
    ui.use_client(BackendClient("http://odd", token="", http=http))
    try:
        at = AppTest.from_file(APP, default_timeout=TIMEOUT_S).run()
        _clean(at)
        assert len(at.error) == 1 and "internal error" in at.error[0].value
    finally:
        ui.use_client(None)


def test_calibration_page_shows_the_stored_advice_and_says_when_it_does_not_predict(dashboard, backend):
    from backend.guided.advice import reading, save_advice

    validation = {"dense": {"accuracy": 0.75, "interval": [0.55, 0.95], "n_examples": 20}, "limit": 20,
                  "sample_seed": 1234, "all_sets": {"rho": -0.2, "p_value": 0.68, "n": 6},
                  "without_task_set": {"rho": -0.1, "p_value": 0.92, "n": 5}}
    ranking = [{"calibration": name, "score": score, "rank": rank, "accuracy": 0.6, "interval": [0.4, 0.8],
                "n_examples": 20} for rank, (name, score) in enumerate(
                    [("sst2", 0.9), ("imdb", 0.8), ("rte", 0.7), ("boolq", 0.65), ("lambada", 0.6),
                     ("arc_easy", 0.55)], start=1)]
    save_advice({"model": "tiny-llama", "task": "sst2", "task_text": "sst2", "proxy": "Wanda 0.5 mask agreement",
                 "ranking": ranking, "validation": validation, "reading": reading(validation)},
                backend["app"].state.api.settings)
    at = _open(dashboard(), "calibration", result=backend["nsa"]["id"])
    _clean(at)
    table = next(e.value for e in at.dataframe if "mask agreement" in e.value.columns)
    assert list(table["calibration set"]) == ["sst2", "imdb", "rte", "boolq", "lambada", "arc_easy"]
    assert table["95% CI"].iloc[0] == "[0.400, 0.800]"
    shown = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "does NOT predict" in shown and "rho (all sets, n=6): -0.20" in shown


# --------------------------------------------------------------------------- polish


@pytest.mark.parametrize("page", ["explorer", "attribute", "calibration", "accuracy", "jobs"])
def test_every_page_says_how_to_read_it(dashboard, backend, page):
    at = _open(dashboard(), page, result=backend["nsa"]["id"])
    _clean(at)
    assert [e.label for e in at.expander][:1] == ["How to read this"]


def test_explorer_tables_use_human_names_and_formatted_drops(dashboard, backend):
    at = _open(dashboard(), "explorer", result=backend["nsa"]["id"])
    _clean(at)
    raw = {"drop_influential", "baseline_all_neurons", "baseline_non_influential", "excess_drop"}
    for element in at.dataframe:
        assert not raw & set(element.value.columns), element.value.columns
    assert [b.proto.label for b in at.get("download_button")][:4] == ["SVG", "PDF", "SVG", "PDF"]


def test_jobs_page_offers_offline_sets_first_and_withholds_hub_ones_offline(dashboard, backend, monkeypatch):
    from backend.api.routes import calibration

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub check answers "unreachable" at once
    monkeypatch.setitem(calibration._HUB_CHECK, "at", -1e9)
    at = _open(dashboard(), "jobs")
    _clean(at)
    rows = backend["api"].calibration_sets()
    offline = [row["name"] for row in rows if row["offline"]]
    hub_only = [row["name"] for row in rows if not row["offline"]]
    assert "c4" in hub_only and all(not row["available"] for row in rows if not row["offline"])
    options = at.selectbox(key="jobs_calibration").options
    assert options == offline  # c4 and the other hub sets are not offered offline
    assert at.selectbox(key="jobs_calibration").value == "lambada"  # offline general text
    assert any("c4" in caption.value and "cannot be reached" in caption.value for caption in at.caption)


def test_accuracy_page_shows_the_protection_experiment(dashboard, backend):
    from backend.evaluation.store import ResultsStore

    at = _open(dashboard(), "accuracy")
    _clean(at)
    assert any("No protection experiment stored yet" in caption.value for caption in at.caption)
    versus = {"difference": -0.05, "low": -0.12, "high": 0.02, "p_value": 0.27, "verdict": "not distinguishable"}
    rows = [{"sparsity": "0.5", "task": "sst2", "arm": arm, "accuracy": accuracy, "low": accuracy - 0.07,
             "high": accuracy + 0.07, "n": 200, "protected_task": True,
             "vs_unprotected": versus if arm == "nsa" else None}
            for arm, accuracy in (("dense", 0.6), ("unprotected", 0.5), ("nsa", 0.45))]
    document = {"id": "protect-sst2-0123456789ab", "status": "done", "rows": rows, "created_at": "now",
                "spec": {"model": "tiny-llama", "method": "wanda", "ratio": 0.01, "task": "sst2", "limit": 200,
                         "mode": "keep"}, "selection": {"texts": 32, "overlap_with_evaluation": 0},
                "protection": {"nsa": {"count": 7}}}
    ResultsStore.from_settings().put_experiment("protect", document["id"], "done", document)
    at = _open(dashboard(), "accuracy")
    _clean(at)
    frame = _frame(at, "Δ vs unprotected (pts)", "reading").set_index("arm")
    assert frame.loc["NSA-protected", "accuracy %"] == 45.0
    assert frame.loc["NSA-protected", "Δ vs unprotected (pts)"] == -5.0
    assert frame.loc["NSA-protected", "reading"] == "not distinguishable"
    assert any("7 neurons protected" in caption.value for caption in at.caption)


def test_jobs_page_has_the_protection_inputs(dashboard, backend):
    at = _open(dashboard(), "jobs")
    _clean(at)
    assert at.selectbox(key="jobs_protect").options == ["none", "NSA result", "NSA on a task"]
    at.selectbox(key="jobs_protect").set_value("NSA result").run()  # the fields show once they apply
    assert at.selectbox(key="jobs_protect_mode").options == ["keep", "upweight"]
