"""Neuron explorer: one neuron's activation on a text, dense and each pruned variant, aligned.

The text comes from a stored NSA result (by id, so the URL reproduces the view) or from a
dataset sample run through NSA now. Below the heatmap: where activation was lost over the
selected neurons (layer x neuron), and the top neurons as a table; choosing a row opens its
heatmap.
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.links import ViewState, neuron_href, share_url
from frontend.views import display, figures, nsa_stats, nsa_view, static_figures, verdict_view
from frontend.views.heatmap import styled_fragment

MAX_VARIANTS = 8

st.title("Neuron explorer")
st.caption("Which neurons fire on a text's influential words, and what pruning left of them. "
           "Colours: blue < 0 < red, one scale per neuron fixed by the dense model.")
ui.how_to_read("explorer")
state = ui.view_state()
api = ui.client()

left, right = st.columns([2, 3])
model = ui.pick_model(api, state.model, key="ex_model", container=left)
if model is None:
    st.info("The backend lists no model.")
    st.stop()

# A result computed on the previous run is opened now, before the widgets that show it exist.
pending = st.session_state.pop("ex_pending_result", None)
if pending:
    st.session_state["ex_source"], st.session_state["ex_result_pick"] = "Stored NSA result", pending
    st.session_state["ex_result"] = pending
source = right.radio("Text", ["Stored NSA result", "Dataset sample"], horizontal=True, key="ex_source")


def run_nsa(texts: list[str], variants: list[str], task: str) -> None:
    with st.spinner("Running NSA (influential words, neuron scores, variants)…"):
        envelope = ui.fetch(api.nsa, {"model": model, "texts": texts, "variants": variants, "task": task},
                            what="NSA")
    if envelope is not None:
        st.session_state["ex_pending_result"] = envelope["id"]
        st.rerun()


if source == "Dataset sample":
    variants_all = ui.fetch(api.variants, base=model, what="variants") or []
    labelled = [row["name"] for row in ui.fetch(api.calibration_sets, what="datasets") or []
                if row.get("labelled_splits")]
    tasks = [row["name"] for row in ui.fetch(api.nsa_tasks, what="NSA tasks") or []] or ["sentiment"]
    c1, c2, c3 = st.columns([1, 1, 3])
    dataset = c1.selectbox("Dataset", labelled, key="ex_dataset")
    seed = c2.number_input("Draw", min_value=0, value=0, step=1, key="ex_seed",
                           help="Which random draw of examples")
    samples = ui.fetch(api.samples, dataset, 10, int(seed), what="samples") or []
    if samples:
        picked = c3.selectbox("Sample", range(len(samples)), key="ex_sample",
                              format_func=lambda i: f"[{samples[i].get('label_text', '?')}] "
                                                    f"{nsa_view.text_preview(samples[i]['text'])}")
        chosen = st.multiselect("Variants to compare", [v["id"] for v in variants_all],
                                default=[v for v in state.variants if v in {x["id"] for x in variants_all}],
                                max_selections=MAX_VARIANTS, key="ex_variants_new",
                                format_func=lambda vid: nsa_view.variant_label(
                                    next(v for v in variants_all if v["id"] == vid)))
        task = st.selectbox("Task type", tasks, key="ex_task")
        if st.button("Attribute this sample", type="primary", key="ex_run"):
            run_nsa([samples[picked]["text"]], chosen, task)
    st.stop()

summaries = ui.fetch(api.nsa_results, model=model, what="stored NSA results") or []
ids = [row["id"] for row in summaries]
wanted = st.session_state.get("ex_result") or state.result
if wanted and wanted not in ids:
    ids.insert(0, wanted)  # a shared id older than the listing, or just computed
if not ids:
    st.info("No NSA result stored yet for this model: pick **Dataset sample** above, use "
            "**Attribute your text**, or wait for the demo's background job.")
    st.stop()
by_id = {row["id"]: row for row in summaries}


def describe(result_id: str) -> str:
    row = by_id.get(result_id)
    if row is None:
        return result_id
    return (f"{nsa_view.text_preview(row['preview'], 60)} \u00b7 {row['n_texts']} text(s), "
            f"{len(row['variants'])} variant(s) \u00b7 {result_id}")


if st.session_state.get("ex_result_pick") not in ids:
    st.session_state["ex_result_pick"] = wanted if wanted in ids else ids[0]
result_id = right.selectbox("Stored result", ids, key="ex_result_pick", format_func=describe)
st.session_state["ex_result"] = result_id

envelope, result = ui.checked_nsa_result(result_id)
for warning in result.get("warnings", []):
    st.caption(f":material/warning: {warning}")

labels = nsa_view.variant_labels(result)
keys = nsa_view.neuron_keys(result)
if not keys:
    st.info("This result selected no neuron.")
    st.stop()

# Choices start from the URL on first load; afterwards the widgets own them (session state).
if "ex_variant_pick" not in st.session_state or not set(st.session_state["ex_variant_pick"]) <= set(labels):
    from_url = [v for v in state.variants if v in labels]
    st.session_state["ex_variant_pick"] = from_url or list(labels)
texts = result.get("texts", [])
if st.session_state.get("ex_text") not in range(len(texts)):
    st.session_state["ex_text"] = state.text if state.text is not None and state.text < len(texts) else 0
layers = sorted({layer for layer, _ in keys})
if st.session_state.get("ex_layer") not in layers:
    st.session_state["ex_layer"] = state.layer if state.layer in layers else keys[0][0]

c1, c2, c3, c4 = st.columns([3, 3, 1, 1])
shown_variants = c1.multiselect("Variants", list(labels), key="ex_variant_pick", format_func=labels.__getitem__)
text_index = c2.selectbox("Text", range(len(texts)), key="ex_text",
                          format_func=lambda i: f"{i}: {nsa_view.text_preview(texts[i]['text'], 50)}")
layer = c3.selectbox("Layer", layers, key="ex_layer")
indices = [index for lay, index in keys if lay == layer]
if st.session_state.get("ex_neuron") not in indices:
    st.session_state["ex_neuron"] = state.neuron if state.neuron in indices else indices[0]
neuron = c4.selectbox("Neuron", indices, key="ex_neuron")

view = ViewState(model=model, variants=tuple(shown_variants), result=result_id, text=text_index,
                 layer=layer, neuron=neuron)
ui.publish(view)

text = texts[text_index]
influential = text.get("influential", {})
words = [w["word"] for w in influential.get("words", [])]
st.markdown(f"**Influential words** ({influential.get('source', '?')}): "
            + (", ".join(f"`{w}`" for w in words) or "none")
            + (f" \u00b7 label **{text['label']}**" if text.get("label") else ""))

fragment = nsa_view.neuron_heatmap_html(result, text_index, layer, neuron, shown_variants)
if fragment is None:
    st.warning(f"Neuron {layer}:{neuron} has no heatmap for text {text_index}.")
else:
    st.html(styled_fragment(fragment))
    ui.figure_downloads(lambda: static_figures.neuron_heatmap_static(result, text_index, layer, neuron,
                                                                     shown_variants),
                        f"heatmap-{result_id}-L{layer}-N{neuron}-text{text_index}", key="ex_heatmap_figure")
first_variant = next(iter(shown_variants), None)
st.markdown(f"[Layer {layer}, neuron {neuron} over a whole corpus →]"
            f"({neuron_href(model, layer, neuron, variant=first_variant, current_url=st.context.url)})"
            " (its neuron page: top examples, density, what each variant changed)")
if st.context.url:
    st.caption(f"Link to this view: `{share_url(st.context.url, 'explorer', view)}`")

drops = nsa_view.word_drops(result, text_index)
if not drops.empty and len(drops.columns) > 1:
    with st.expander("Per-word drops (all selected neurons) next to the all-neuron baseline", expanded=False):
        st.plotly_chart(figures.word_drop_figure(drops), key="ex_word_drops")
        st.dataframe(display.readable_table(drops, drops=[c for c in drops.columns if c != "word"]),
                     hide_index=True)

st.subheader("Where activation was lost")
if labels:
    overview_variant = st.selectbox("Variant", list(labels), format_func=labels.__getitem__, key="ex_overview")
    points = nsa_view.loss_points(result, str(overview_variant))
    size = result.get("model", {})
    st.plotly_chart(figures.activation_loss_figure(points, layers=size.get("layers"),
                                                   neurons_per_layer=size.get("neurons_per_layer")),
                    key="ex_overview_chart")
    ui.figure_downloads(lambda: static_figures.activation_loss_for_variant(result, overview_variant),
                        f"activation-lost-{result_id}-{overview_variant}", key="ex_overview_figure")
    for line in nsa_stats.headline_lines(result):
        st.markdown(line)
    with st.expander("All figures with 95% intervals (held-out and in-sample) and per word"):
        statistics = nsa_stats.statistics_table(result)
        st.dataframe(statistics, hide_index=True, key="ex_statistics", column_config={
            c: st.column_config.NumberColumn(format="percent") for c in ("mean", "95% low", "95% high")})
        st.dataframe(nsa_stats.word_statistics_table(result), hide_index=True, key="ex_word_statistics")
else:
    st.caption("This result compares no pruned variant: run NSA with variants to see drops.")

verdict_view.render(result, result_id, "ex")

st.subheader("Top NSA neurons")
table = nsa_view.neuron_table(result)
sort_by = st.radio("Sort by", ["rank", "specificity z"], horizontal=True, key="ex_sort",
                   help="specificity z: the score against random token sets of the same size in the same "
                        "texts; low = the neuron fires on everything, not on these words")
if sort_by != "rank":
    table = table.sort_values(sort_by, ascending=False, na_position="last", kind="stable")
st.session_state["ex_table_keys"] = list(zip(table["layer"], table["neuron"], strict=True))


def open_selected_row() -> None:
    rows = st.session_state["ex_table"].selection.rows
    if rows:
        layer_pick, neuron_pick = st.session_state["ex_table_keys"][rows[0]]
        st.session_state["ex_layer"], st.session_state["ex_neuron"] = int(layer_pick), int(neuron_pick)


shown_table = display.readable_neuron_table(table)
shown_table.insert(0, "neuron page", [neuron_href(model, lay, neu, current_url=st.context.url)
                                      for lay, neu in zip(table["layer"], table["neuron"], strict=True)])
st.dataframe(shown_table, hide_index=True, key="ex_table", on_select=open_selected_row,
             selection_mode="single-row",
             column_config={"neuron page": st.column_config.LinkColumn("neuron page", display_text="open")})
st.caption("Choose a row to open its heatmap above; **open** shows the neuron over a whole corpus.")
