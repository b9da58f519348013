"""What pruning changed: neurons ranked by change, the contexts where the variant diverges most,
and neurons found by a token, all from a neuron index.

Every change figure stands next to its split-half floor (the dense model against itself on the
other half of the corpus); neurons inside it read "not distinguishable from corpus noise". Each
neuron number opens its neuron page.
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.links import ViewState, neuron_href
from frontend.views import changed_view

st.title("What pruning changed")
st.caption("Over one corpus, dense model against a pruned variant: which neurons changed beyond corpus "
           "noise, and where the variant's next-token predictions diverge.")
ui.how_to_read("changed")
state = ui.view_state()
api = ui.client()

c_model, c_index, c_variant = st.columns([3, 4, 3])
model = ui.pick_model(api, state.model, key="ch_model", container=c_model)
if model is None:
    st.info("The backend lists no model.")
    st.stop()
indexes = [row for row in ui.fetch(api.indexes, model, what="neuron indexes") or [] if row.get("variants")]
if not indexes:
    st.info("No neuron index with a variant for this model yet: build one with "
            "`prunelens index --model ... --variants A,B` or `POST /index/jobs`.")
    st.stop()
by_id = {row["id"]: row for row in indexes}
ids = sorted(sorted(by_id, key=lambda i: by_id[i].get("created") or "", reverse=True),
             key=lambda i: bool(by_id[i].get("stale")))
index_id = ui.pick("Index", ids, state.index, key="ch_index", container=c_index,
                   format_func=lambda i: f"{by_id[i].get('tokens') or '?'} tokens \u00b7 "
                                         f"{len(by_id[i]['variants'])} variant(s) \u00b7 {i}")
variant = ui.pick("Variant", list(by_id[index_id]["variants"]), state.variant, key="ch_variant",
                  container=c_variant)

st.subheader("Neurons ranked by change")
f_order, f_layer, f_limit, f_noise = st.columns([3, 1, 1, 2])
orders = list(changed_view.ORDERS)
order = f_order.selectbox("Rank by", orders, format_func=changed_view.ORDERS.__getitem__, key="ch_order")
layer_text = f_layer.text_input("Layer", value="" if state.layer is None else str(state.layer), key="ch_layer",
                                help="Only this layer (empty: all layers)")
layer = int(layer_text) if layer_text.strip().isdigit() else None
limit = int(f_limit.number_input("Show", min_value=5, max_value=1000, value=50, step=5, key="ch_limit"))
include_noise = f_noise.checkbox("Include neurons inside the noise floor", value=True, key="ch_noise")
token = st.session_state.get("ch_token", state.token or "")
ui.publish(ViewState(model=model, index=index_id, variant=variant, layer=layer, token=token or None))


def href(layer_of: int, neuron_of: int) -> str:
    return neuron_href(model, layer_of, neuron_of, index=index_id, variant=variant, current_url=st.context.url)


rows = ui.fetch(api.changed_neurons, index_id, variant, layer=layer, order=order, limit=limit,
                include_noise=include_noise, what="changed neurons")
if rows is not None:
    st.markdown(changed_view.noise_summary(rows))
    percent = st.column_config.NumberColumn(format="percent")
    st.dataframe(changed_view.changed_table(rows, href), hide_index=True, key="ch_table", column_config={
        "neuron page": st.column_config.LinkColumn("neuron page", display_text="open"),
        "mass lost": percent, "top-k kept": percent, "token overlap": percent, "overlap floor": percent})
    if rows:
        left, right = st.columns([2, 3])
        left.markdown(changed_view.ranked_links(rows, href))
        right.plotly_chart(changed_view.changed_figure(rows), key="ch_figure")

st.subheader("Where the variant's predictions diverge")
report = ui.fetch(api.divergence, index_id, variant, 30, what="divergence")
if report is not None:
    st.markdown(f"Mean KL(dense \u2016 variant) over the corpus: **{report['mean_kl']:.4g} nats** per token. "
                "Below, the positions where it is largest (the outlined token is the one whose next-token "
                "distribution diverged), and the tokens with the largest mean KL.")
    left, right = st.columns([3, 2])
    left.html(changed_view.divergence_html(report))
    right.dataframe(changed_view.token_divergence_table(report), hide_index=True, key="ch_tokens")

st.subheader("Search neurons by token")
token = st.text_input("Token", key="ch_token", value=state.token or "",
                      placeholder="e.g. terrible", help="Neurons whose top examples fire on this token")
if token.strip():
    hits = ui.fetch(api.search_neurons, index_id, token.strip(), variant, what="search")
    if hits is not None:
        if hits:
            st.dataframe(changed_view.search_table(hits, href), hide_index=True, key="ch_search", column_config={
                "neuron page": st.column_config.LinkColumn("neuron page", display_text="open")})
        else:
            st.caption(f"No neuron's top examples fire on {token.strip()!r}.")
