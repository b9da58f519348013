"""The neuron page's and "what changed" page's builders, as plain functions of backend-shaped JSON:
one colour scale fixed by the dense model, floors and their labels, histograms, links."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from frontend.links import PAGE_PATHS, ViewState, neuron_href, page_href
from frontend.views import changed_view, neuron_view
from frontend.views.heatmap import css_rgb, diverging_rgb


def example(document, position, values, focus, tokens=None):
    tokens = tokens or [f"t{i}" for i in range(len(values))]
    return {"document": document, "position": position, "activation": values[focus], "tokens": tokens,
            "token_ids": list(range(len(values))), "activations": values, "focus": focus}


def page(variant=True):
    dense_top = [example(3, 10, [0.1, 4.0, -0.5], 1), example(5, 2, [2.0, 0.0, 0.3], 0)]
    body = {
        "index": "idx1", "model": "m", "layer": 2, "neuron": 7, "tokens": 5000, "corpus": "mix",
        "variants": ["v1"], "histogram_edges": [0.0, 0.01, 0.1, 1.0, 10.0],
        "dense": {"stats": {"count": 100, "mean": 0.2, "mean_abs": 0.5, "std": 0.9, "max": 4.0, "min": -6.0,
                            "density": 0.25, "density_threshold": 0.1},
                  "histogram": [50, 25, 20, 5], "top_positive": dense_top,
                  "top_negative": [example(4, 1, [-6.0, 1.0], 0)]},
        "variant": None, "weights_removed": None,
    }
    if variant:
        body["variant"] = {
            "id": "v1", "stats": {**body["dense"]["stats"], "max": 2.0, "min": -1.0},
            "histogram": [80, 10, 10, 0], "top_positive": [example(3, 10, [0.0, 3.0, 0.0], 1)],
            "top_negative": [],
            "agreement": {"pearson": 0.4, "mass_ratio": 0.6, "mass_lost": 0.4, "topk_overlap": 0.5,
                          "profile_correlation": 0.3, "profile_correlation_floor": 0.8,
                          "token_overlap": 0.7, "token_overlap_floor": 0.6, "not_distinguishable": False},
            "dense_top_reread": [{**dense_top[0], "dense_activation": 4.0, "variant_activation": 3.0,
                                  "dense_activations": [0.1, 4.0, -0.5], "variant_activations": [0.0, 3.0, 0.0]},
                                 {**dense_top[1], "dense_activation": 2.0, "variant_activation": -0.1,
                                  "dense_activations": [2.0, 0.0, 0.3], "variant_activations": [-0.1, 0.0, 0.0]}],
        }
        body["weights_removed"] = {"down_column": 0.5, "gate_row": 0.25}
    return body


def backgrounds(fragment: str) -> list[str]:
    return re.findall(r"background:(rgb\(\d+,\d+,\d+\))", fragment)


def test_one_scale_fixed_by_the_dense_model_colours_both_columns():
    shown = page()
    scale = neuron_view.dense_scale(shown)
    assert scale == 6.0  # the dense max |a| over the corpus (|min| here), never the variant's 2.0
    dense_html = neuron_view.example_html(shown["dense"]["top_positive"][0], scale)
    variant_html = neuron_view.example_html(shown["variant"]["top_positive"][0], scale)
    assert backgrounds(dense_html)[1] == css_rgb(diverging_rgb(4.0, 6.0))
    assert backgrounds(variant_html)[1] == css_rgb(diverging_rgb(3.0, 6.0))  # paler: it fired less
    assert backgrounds(variant_html)[1] != css_rgb(diverging_rgb(3.0, 2.0))
    assert re.findall(r'class="pl-tok pl-focus"[^>]*>([^<]*)<', dense_html) == ["t1"]  # the example token
    assert "doc 3 \u00b7 tok 10" in dense_html


def test_reread_rows_align_dense_and_variant_and_still_fires_counts_kept_examples():
    shown = page()
    fragment = neuron_view.reread_html(shown["variant"]["dense_top_reread"], 6.0, "wanda")
    assert fragment.count("<th") == 4  # two examples, each a dense row and a variant row
    assert "dense +4 \u2192 wanda +3 (drop 25%)" in fragment
    # 3.0 of 4.0 kept with the same sign: fires; -0.1 of 2.0: does not.
    assert neuron_view.still_fires(shown["variant"]["dense_top_reread"]) == 0.5
    assert neuron_view.still_fires([]) is None


def test_histogram_overlay_is_a_share_of_each_models_tokens_on_a_log_axis():
    shown = page()
    figure = neuron_view.histogram_figure(shown["histogram_edges"],
                                          [("dense", [50, 25, 20, 5]), ("v1", [80, 10, 10, 0])])
    assert [trace.name for trace in figure.data] == ["dense", "v1"]
    assert figure.layout.xaxis.type == "log"
    dense = figure.data[0]
    assert list(dense.y[:-1]) == [0.5, 0.25, 0.2, 0.05]
    assert dense.x[0] == pytest.approx(0.001) and list(dense.x[1:]) == [0.01, 0.1, 1.0, 10.0]
    lower_only = neuron_view.histogram_figure([0.0, 0.01, 0.1], [("dense", [1, 1, 2])])
    assert list(lower_only.data[0].x) == [pytest.approx(0.001), 0.01, 0.1, 0.2]
    with pytest.raises(ValueError, match="3 counts for 4 bins"):
        neuron_view.histogram_figure(shown["histogram_edges"], [("bad", [1, 2, 3])])


def test_each_change_figure_stands_next_to_its_floor_with_the_noise_label_inside_it():
    table = neuron_view.agreement_table(page()["variant"]["agreement"])
    rows = {row["figure"]: row for row in table.to_dict("records")}
    profile = rows["token-profile correlation"]
    assert (profile["dense vs variant"], profile["split-half floor (dense vs dense)"]) == (0.3, 0.8)
    assert profile["reading"] == "changed (below the floor)"
    assert rows["top-k token overlap"]["reading"] == neuron_view.NOISE_LABEL  # 0.7 >= floor 0.6
    assert neuron_view.inside_floor(0.6, 0.6) is True and neuron_view.inside_floor(None, 0.6) is None
    assert "Changed" in neuron_view.verdict_line({"not_distinguishable": False})
    assert neuron_view.NOISE_LABEL in neuron_view.verdict_line({"not_distinguishable": True})


def test_logits_table_puts_dense_and_variant_side_by_side_and_stats_table_both_models():
    dense = {"promoted": [{"token": " good", "value": 1.5}], "suppressed": [{"token": " bad", "value": -2.0}]}
    variant = {"promoted": [{"token": " fine", "value": 0.5}], "suppressed": []}
    table = neuron_view.logits_table(dense, variant, "v1")
    first = table.iloc[0]
    assert (first["effect"], first["dense token"], first["dense value"], first["v1 token"]) == \
        ("promoted", "' good'", 1.5, "' fine'")
    assert table.iloc[1]["dense value"] == -2.0
    stats = neuron_view.stats_table(page(), "v1")
    assert stats.set_index("figure").loc["max", "v1"] == 2.0
    assert "down column: 50.0%" in neuron_view.weights_removed_text(page()["weights_removed"])


def test_text_test_and_nsa_table():
    answer = {"tokens": ["", "Hi", " there"], "dense": [9.0, 3.0, -3.0], "variant": [1.0, 1.5, 0.0]}
    fragment = neuron_view.text_test_html(answer, 6.0, "v1")
    assert fragment.count("<th") == 2 and css_rgb(diverging_rgb(1.5, 6.0)) in fragment
    selections = [{"result": "r1", "created_at": "t", "preview": "A film", "n_texts": 4, "task": "sentiment",
                   "rank": 2, "score": 0.31, "words": ["slow", "beautiful"],
                   "held_out": [{"variant": "v1", "mean": 0.12, "low": 0.02, "high": 0.2, "verdict": "higher"}]}]
    table = neuron_view.nsa_table(selections, lambda rid: f"./?result={rid}")
    row = table.iloc[0]
    assert (row["result"], row["rank"], row["words"]) == ("./?result=r1", 2, "slow, beautiful")
    assert row["held-out excess drop"] == "v1: +12.0% [+2.0%, +20.0%] higher"


def test_changed_rows_link_to_their_neuron_pages_and_label_the_noise_floor():
    rows = [{"layer": 1, "neuron": 5, "pearson": 0.2, "mass_lost": 0.6, "topk_overlap": 0.1,
             "profile_correlation": 0.1, "profile_correlation_floor": 0.7, "token_overlap": 0.2,
             "token_overlap_floor": 0.5, "not_distinguishable": False},
            {"layer": 0, "neuron": 9, "pearson": 0.95, "mass_lost": 0.01, "topk_overlap": 0.9,
             "profile_correlation": 0.9, "profile_correlation_floor": 0.8, "token_overlap": 0.6,
             "token_overlap_floor": 0.5, "not_distinguishable": True}]
    table = changed_view.changed_table(rows, lambda lay, neu: neuron_href("m", lay, neu, index="i", variant="v"))
    assert list(table["reading"]) == ["changed", neuron_view.NOISE_LABEL]
    link = urlsplit(table.iloc[0]["neuron page"])
    assert link.path == "neuron" and parse_qs(link.query) == {
        "model": ["m"], "layer": ["1"], "neuron": ["5"], "index": ["i"], "variant": ["v"]}
    assert changed_view.noise_summary(rows).startswith("1 of 2 listed neurons changed")
    links = changed_view.ranked_links(rows, lambda lay, neu: f"neuron?layer={lay}&neuron={neu}").splitlines()
    assert links[0] == ("1. [layer 1, neuron 5](neuron?layer=1&neuron=5) \u00b7 correlation 0.200 \u00b7 "
                        "mass lost 60% \u00b7 changed")
    assert links[1].endswith(neuron_view.NOISE_LABEL)
    figure = changed_view.changed_figure(rows)
    assert [len(trace.x) for trace in figure.data] == [1, 1]


def test_divergent_contexts_outline_the_diverging_token_and_tokens_rank_by_kl():
    report = {"mean_kl": 0.05, "top": [{"document": 2, "position": 7, "kl": 1.25, "tokens": ["a", " b", " c"],
                                        "focus": 1}],
              "tokens": [{"token": " b", "mean_kl": 0.9, "count": 4}]}
    fragment = changed_view.divergence_html(report)
    assert "KL 1.25" in fragment and fragment.count("outline") == 1
    assert fragment.index("outline") < fragment.index(" b<") < fragment.index(" c<")
    assert changed_view.token_divergence_table(report).iloc[0].tolist() == ["' b'", 0.9, 4]
    hits = changed_view.search_table([{"layer": 3, "neuron": 4, "hits": 2, "max_activation": 1.5}],
                                     lambda lay, neu: f"neuron?layer={lay}&neuron={neu}")
    assert hits.iloc[0]["neuron page"] == "neuron?layer=3&neuron=4"


def test_view_state_round_trips_the_neuron_page_fields_and_links_are_absolute_when_known():
    view = ViewState(model="m", index="idx", variant="v", layer=3, neuron=12, token="terrible")
    assert ViewState.from_params(view.to_params()) == view
    assert PAGE_PATHS["neuron"] == "neuron" and PAGE_PATHS["changed"] == "changed"
    assert page_href("neuron", ViewState(layer=1), "http://h:8501/changed?x=1") == "http://h:8501/neuron?layer=1"
    assert page_href("explorer", ViewState(result="r")) == "./?result=r"
