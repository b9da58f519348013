"""Neuron page: what one neuron responds to over a whole corpus, and what a pruned variant left of it.

Reads a neuron index (``GET /neurons/{model}/{layer}/{neuron}?variant=&index=``): top examples of
the dense model and the variant side by side on one colour scale fixed by the dense model, the
dense top examples re-read under the variant, the density histograms overlaid, the change
figures next to their split-half floors, logit effects, the weights removed, the NSA results that
selected the neuron, and a box to test your own text. The URL holds the view (a shareable link).
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.links import ViewState, neuron_href, page_href, share_url
from frontend.views import neuron_view
from frontend.views.heatmap import styled_fragment

DENSE_ONLY = "(dense only)"

st.title("Neuron")
st.caption(
    "One neuron over a whole corpus: its top examples, how often it fires, what its output "
    "promotes, and what a pruned variant left of it. Colours: blue < 0 < red, one scale fixed "
    "by the dense model's largest |activation|."
)
ui.how_to_read("neuron")
state = ui.view_state()
api = ui.client()

c_model, c_index, c_variant, c_layer, c_neuron = st.columns([3, 4, 3, 1, 1])
model = ui.pick_model(api, state.model, key="np_model", container=c_model)
if model is None:
    st.info("The backend lists no model.")
    st.stop()
indexes = ui.fetch(api.indexes, model, what="neuron indexes") or []
if not indexes:
    st.info(
        "No neuron index of this model yet. Build one with `prunelens index --model ... --variants ...` "
        "or `POST /index/jobs`; the demo builds a small one in the background once its variants exist."
    )
    st.stop()
by_id = {row["id"]: row for row in indexes}
newest_first = sorted(by_id, key=lambda i: by_id[i].get("created") or "", reverse=True)
ids = sorted(newest_first, key=lambda i: bool(by_id[i].get("stale")))  # fresh ones first (sort is stable)


def describe(index_id: str) -> str:
    row = by_id[index_id]
    stale = " \u00b7 stale" if row.get("stale") else ""
    return (
        f"{row.get('tokens') or '?'} tokens \u00b7 {len(row.get('variants', []))} variant(s){stale} \u00b7 {index_id}"
    )


index_id = ui.pick("Index", ids, state.index, key="np_index", format_func=describe, container=c_index)
variants = [DENSE_ONLY, *by_id[index_id].get("variants", [])]
variant_pick = ui.pick("Variant", variants, state.variant, key="np_variant", container=c_variant)
variant = None if variant_pick == DENSE_ONLY else variant_pick
layer = int(c_layer.number_input("Layer", min_value=0, value=state.layer or 0, step=1, key="np_layer"))
neuron = int(c_neuron.number_input("Neuron", min_value=0, value=state.neuron or 0, step=1, key="np_neuron"))
view = ViewState(model=model, index=index_id, variant=variant, layer=layer, neuron=neuron)
ui.publish(view)

page = ui.fetch(api.neuron, model, layer, neuron, variant=variant, index=index_id, what="neuron page")
if page is None:
    st.stop()
label = variant or "variant"
scale = neuron_view.dense_scale(page)
st.subheader(f"Layer {layer}, neuron {neuron}")
st.caption(
    f"Index `{page['index']}` \u00b7 {page.get('tokens') or '?'} corpus tokens \u00b7 corpus "
    f"{page.get('corpus')}" + (f" \u00b7 link: `{share_url(st.context.url, 'neuron', view)}`" if st.context.url else "")
)

left, right = st.columns(2)
left.markdown("**Activation statistics**")
left.dataframe(neuron_view.stats_table(page, label), hide_index=True, key="np_stats")
edges = page["histogram_edges"]
sides = [("dense", page["dense"]["histogram"])]
if page.get("variant"):
    sides.append((label, page["variant"]["histogram"]))
right.markdown("**Density of |activation|**")
right.plotly_chart(neuron_view.histogram_figure(edges, sides), key="np_histogram")

if page.get("variant"):
    agreement = page["variant"]["agreement"]
    st.markdown("#### What the variant changed")
    st.markdown(neuron_view.verdict_line(agreement))
    st.dataframe(neuron_view.agreement_table(agreement), hide_index=True, key="np_agreement")
    st.caption(neuron_view.weights_removed_text(page.get("weights_removed")))

st.markdown("#### Top examples")
sign = st.radio(
    "Side",
    ["positive", "negative"],
    horizontal=True,
    key="np_sign",
    help="SwiGLU neurons fire both ways: the largest positive and the most negative activations.",
)
side = f"top_{sign}"
columns = st.columns(2 if page.get("variant") else 1)
columns[0].html(neuron_view.examples_html(page["dense"][side], scale, "dense"))
if page.get("variant"):
    columns[1].html(neuron_view.examples_html(page["variant"][side], scale, label))
    rereads = page["variant"].get("dense_top_reread") or []
    share = neuron_view.still_fires(rereads)
    st.markdown(
        "#### The dense top examples, re-read under the variant"
        + ("" if share is None else f" \u2014 still fires on {share:.0%}")
    )
    st.caption(
        "Same tokens, both models (the variant keeps 'firing' when it keeps at least half of the "
        "dense activation with the same sign). Hover a cell for the value and the drop."
    )
    st.html(styled_fragment(neuron_view.reread_html(rereads, scale, label)))

st.markdown("#### Logit effects")
st.caption(
    "The neuron's down-projection column through the final norm and the unembedding: the tokens its "
    "output raises and lowers, per unit of activation (its weights only, as a direction)."
)
logits = ui.fetch(api.neuron_logits, model, layer, neuron, variant, what="logit effects")
if logits is not None:
    st.dataframe(
        neuron_view.logits_table(logits["dense"], logits.get("variant"), label), hide_index=True, key="np_logits"
    )

st.markdown("#### NSA results that selected this neuron")
selections = ui.fetch(api.neuron_nsa, model, layer, neuron, what="NSA results") or []
if selections:
    table = neuron_view.nsa_table(
        selections,
        lambda rid: page_href(
            "explorer", ViewState(model=model, result=rid, layer=layer, neuron=neuron), st.context.url
        ),
    )
    st.dataframe(
        table,
        hide_index=True,
        key="np_nsa",
        column_config={"result": st.column_config.LinkColumn("result", display_text="open in explorer")},
    )
else:
    st.caption("No stored NSA result selected this neuron.")

st.markdown("#### Test your own text")
text = st.text_area("Text", key="np_text", height=80, placeholder="Type a sentence to see this neuron fire on it")
if st.button("Run on the neuron", key="np_test") and text.strip():
    answer = ui.fetch(api.neuron_test, model, layer, neuron, text, variant, what="text test")
    if answer is not None:
        st.session_state["np_test_answer"] = answer
answer = st.session_state.get("np_test_answer")
if answer is not None:
    st.html(styled_fragment(neuron_view.text_test_html(answer, scale, label)))

st.caption(
    f"Neighbours: [previous neuron]({neuron_href(model, layer, max(0, neuron - 1), index=index_id, variant=variant)})"
    f" \u00b7 [next neuron]({neuron_href(model, layer, neuron + 1, index=index_id, variant=variant)})"
)
