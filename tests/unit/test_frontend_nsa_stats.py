"""The dashboard's NSA statistics through AppTest against the real API: the held-out headline with
its interval, the in-sample value labelled as such, and an excess that is not distinguishable."""

from __future__ import annotations

import pytest
import torch

from tests.unit import test_frontend_pages as pages
from tests.unit.test_frontend_pages import _clean, _frame, _open

dashboard = pages.dashboard  # the pages' fixture, fed by this module's ``backend``

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")

TEXTS = [
    "The movie was painfully slow, but the acting was beautiful.",
    "A delightful, warm and funny film that never drags.",
    "Dull, clumsy and far too long.",
    "A quiet, moving and honest story.",
]
TEXT_WORDS = [["slow", "beautiful"], ["delightful", "funny"], ["Dull", "clumsy"], ["moving", "honest"]]


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    """The real API on a tiny LLaMA with an untouched variant (nothing pruned): its excess drop is
    exactly 0, so every interval contains 0."""
    from fastapi.testclient import TestClient

    from backend.api.app import create_app
    from backend.api.settings import ApiSettings
    from backend.config import get_settings
    from backend.pruning.variants import write_variant
    from frontend.client import BackendClient
    from tests.conftest import tiny_loaded

    cache = tmp_path_factory.mktemp("frontend-stats-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNELENS_CACHE_DIR", str(cache))
        patch.delenv("PRUNELENS_API_TOKEN", raising=False)
        get_settings.cache_clear()
        loaded = tiny_loaded("llama")
        write_variant("untouched", {"base_model": loaded.name, "method": "hand", "calibration": None,
                                    "sparsity": "0", "achieved_sparsity": {"overall": 0.0, "per_linear": {}}},
                      masks={"model.layers.0.mlp.up_proj.weight": torch.zeros(64, 32, dtype=torch.bool)})
        app = create_app(ApiSettings(cache_dir=cache), loaded=loaded)
        with TestClient(app) as http:
            api = BackendClient("http://testserver", http=http)
            envelope = api.nsa({"texts": TEXTS, "text_words": TEXT_WORDS, "variants": ["untouched"], "top_k": 5})
            yield {"api": api, "nsa": envelope}
        get_settings.cache_clear()


def _markdown(at) -> str:
    return "\n".join(element.value for element in at.markdown)


def _check_headline(at, result: dict) -> None:
    text = _markdown(at)
    held = result["comparison"][0]["statistics"]["held_out"]
    assert held["excess_drop"] == {"mean": 0.0, "low": 0.0, "high": 0.0, "n": 4}
    assert "held-out excess drop **+0.0% [95% CI +0.0%, +0.0%]**" in text
    assert "not distinguishable from the baseline" in text
    assert "In-sample (neurons selected and measured on the same texts" in text
    frame = _frame(at, "scope", "verdict", "95% low")
    excess = frame[frame["figure"] == "excess drop"]
    assert set(excess["scope"]) == {"held-out", "in-sample"}
    assert set(excess["verdict"]) == {"not distinguishable from the baseline"}


def test_explorer_shows_the_held_out_headline_and_labels_a_null_excess(dashboard, backend):
    at = _open(dashboard(), "explorer", result=backend["nsa"]["id"])
    _clean(at)
    _check_headline(at, backend["nsa"]["result"])
    # The neuron table carries the specificity and sorts by it.
    at.radio(key="ex_sort").set_value("specificity z").run()
    _clean(at)
    table = _frame(at, "specificity z", "rank")
    values = table["specificity z"].dropna().tolist()
    assert values == sorted(values, reverse=True) and len(values) >= 1


def test_attribute_shows_the_headline_intervals_and_the_word_check(dashboard, backend):
    at = _open(dashboard(), "attribute", result=backend["nsa"]["id"])
    _clean(at)
    _check_headline(at, backend["nsa"]["result"])
    assert "at_dl_stats" in [button.key for button in at.get("download_button")]
    words = _frame(at, "margin change", "no effect")
    assert words["word"].tolist() == [w for group in TEXT_WORDS for w in group]
