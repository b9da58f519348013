"""The Variants page's prune form reads the backend's registry: every method, its options, their bounds.

AppTest against the real FastAPI app in-process (the fixtures of test_frontend_pages): the methods
come from GET /methods, so a method registered in the backend during the test shows up with its
option widgets, without any frontend change.
"""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from backend.pruning import registry
from backend.pruning.registry import MethodOptions, PruningMethod, each_weight
from tests.unit.test_frontend_pages import _clean, _open, backend, dashboard  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:You should not use the 'timeout' argument")


class ToyOptions(MethodOptions):
    keep_share: float = Field(default=0.25, gt=0, le=0.75, description="toy: share of the row kept whatever")
    rounds: int = Field(default=3, ge=1, le=9, description="toy: rounds of something")
    flavour: Literal["plain", "fancy"] = Field(default="fancy", description="toy: which flavour")
    loud: bool = Field(default=False, description="toy: shout")


def _toy_mask(weight, _statistics, _options, spec, _guard):
    from backend.pruning.magnitude import magnitude_mask

    return magnitude_mask(weight, spec)


@pytest.fixture
def toy_method(monkeypatch):
    """A weight method registered in the backend for this test only."""
    method = PruningMethod(name="toy-weights", description="a toy method registered by a test",
                           prune=each_weight(_toy_mask), options=ToyOptions, needs=None)
    registry.methods()  # the built-in ones first
    monkeypatch.setitem(registry._REGISTRY, method.name, method)
    return method


def _widget(at, key: str):
    """The widget with ``key``, or None when the page does not show it."""
    for kind in (at.number_input, at.selectbox, at.checkbox, at.text_input):
        for widget in kind:
            if widget.key == key:
                return widget
    return None


def test_every_registered_method_is_offered_with_only_its_own_options(dashboard, backend):  # noqa: F811
    at = _open(dashboard(), "jobs")
    _clean(at)
    assert at.selectbox(key="jobs_method").options == list(registry.methods())
    assert len(registry.methods()) >= 9
    at.selectbox(key="jobs_method").set_value("ria").run()
    _clean(at)
    alpha = at.number_input(key="jobs_opt_ria_alpha")
    schema = registry.get_method("ria").options.model_json_schema()["properties"]["alpha"]
    assert (alpha.value, alpha.min, alpha.max) == (schema["default"], schema["minimum"], schema["maximum"])
    assert _widget(at, "jobs_opt_sparsegpt_blocksize") is None  # another method's option: not shown
    at.selectbox(key="jobs_method").set_value("sparsegpt").run()
    assert _widget(at, "jobs_opt_ria_alpha") is None and _widget(at, "jobs_opt_sparsegpt_blocksize") is not None
    # A structured method: its sparsity is a neuron ratio.
    at.selectbox(key="jobs_method").set_value("flap").run()
    _clean(at)
    assert at.text_input(key="jobs_sparsity_neurons").value.startswith("neurons:")


def test_a_method_registered_in_the_backend_appears_with_its_options(dashboard, backend, toy_method):  # noqa: F811
    at = _open(dashboard(), "jobs")
    _clean(at)
    assert "toy-weights" in at.selectbox(key="jobs_method").options
    at.selectbox(key="jobs_method").set_value("toy-weights").run()
    _clean(at)
    share = at.number_input(key="jobs_opt_toy-weights_keep_share")
    assert (share.value, share.max) == (0.25, 0.75) and 0 < share.min <= 0.01  # exclusive 0: one step inside
    rounds = at.number_input(key="jobs_opt_toy-weights_rounds")
    assert (rounds.value, rounds.min, rounds.max) == (3, 1, 9)
    assert at.selectbox(key="jobs_opt_toy-weights_flavour").options == ["plain", "fancy"]
    assert at.selectbox(key="jobs_opt_toy-weights_flavour").value == "fancy"
    assert at.checkbox(key="jobs_opt_toy-weights_loud").value is False
    assert _widget(at, "jobs_calibration") is None  # needs no calibration: no calibration fields
    assert _widget(at, "jobs_protect") is None  # does not honour protection: no protection fields


def test_chosen_options_reach_the_job(dashboard, backend):  # noqa: F811
    at = _open(dashboard(), "jobs")
    at.selectbox(key="jobs_method").set_value("ria").run()
    at.number_input(key="jobs_opt_ria_alpha").set_value(0.75)
    at.number_input(key="jobs_nsamples").set_value(2)
    at.number_input(key="jobs_seqlen").set_value(16)
    at.button(key="jobs_create").click().run()
    _clean(at)
    assert any("Prune job" in s.value for s in at.success), [e.value for e in at.error]
    jobs = backend["app"].state.api.jobs.store.list(kind="prune")
    params = next(job.params for job in jobs if job.params.get("method") == "ria")
    assert params["options"] == {"alpha": 0.75} and (params["nsamples"], params["seqlen"]) == (2, 16)


def test_protection_fields_show_only_when_they_apply(dashboard, backend):  # noqa: F811
    at = _open(dashboard(), "jobs")
    _clean(at)
    protection_keys = ("jobs_protect_result", "jobs_protect_task", "jobs_protect_ratio", "jobs_protect_mode",
                       "jobs_protect_factor")
    assert at.selectbox(key="jobs_protect").value == "none"
    assert [key for key in protection_keys if _widget(at, key) is not None] == []
    at.selectbox(key="jobs_protect").set_value("NSA result").run()
    assert [key for key in protection_keys if _widget(at, key) is not None] == ["jobs_protect_result",
                                                                                "jobs_protect_mode"]
    at.selectbox(key="jobs_protect").set_value("NSA on a task").run()
    assert at.selectbox(key="jobs_protect_task").options == ["sst2", "rte"]
    ratio = at.number_input(key="jobs_protect_ratio")
    assert ratio.max == 0.5 and 0 < ratio.min
    assert _widget(at, "jobs_protect_factor") is None
    at.selectbox(key="jobs_protect_mode").set_value("upweight").run()
    factor = at.number_input(key="jobs_protect_factor")
    assert (factor.value, factor.min) == (10.0, 1.0)


def test_a_depth_method_takes_its_blocks_not_a_sparsity(dashboard, backend):  # noqa: F811
    at = _open(dashboard(), "jobs")
    at.selectbox(key="jobs_method").set_value("shortgpt").run()
    _clean(at)
    assert _widget(at, "jobs_sparsity") is None and _widget(at, "jobs_sparsity_neurons") is None
    drop = at.number_input(key="jobs_opt_shortgpt_drop_blocks")
    assert (drop.value, drop.min) == (1, 1)
    assert _widget(at, "jobs_opt_shortgpt_sparsity_profile") is None  # OWL / DSnoT: weight methods only
    at.number_input(key="jobs_nsamples").set_value(2)
    at.number_input(key="jobs_seqlen").set_value(16)
    drop.set_value(2)  # the test backend's model has 2 blocks: refused with the backend's one line
    at.button(key="jobs_create").click().run()
    assert any("drop at most 1" in e.value for e in at.error), [e.value for e in at.error]
    at.number_input(key="jobs_opt_shortgpt_drop_blocks").set_value(1)
    at.button(key="jobs_create").click().run()
    assert any("Prune job" in s.value for s in at.success), [e.value for e in at.error]
    jobs = backend["app"].state.api.jobs.store.list(kind="prune")
    params = next(job.params for job in jobs if job.params.get("method") == "shortgpt")
    assert params["options"] == {} and params.get("sparsity") is None, params  # drop_blocks 1: the default
