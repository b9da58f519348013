"""Attribute your text: paste or upload texts, run NSA, edit the influential words, rerun, download.

The result is stored by the backend under an id that goes into the URL, so the page can be
shared and reopened. Downloads: the result JSON, the neuron table as CSV and every heatmap as
one self-contained HTML file.
"""

from __future__ import annotations

import json

import streamlit as st

from frontend import ui
from frontend.links import ViewState
from frontend.views import (
    display,
    nsa_stats,
    nsa_view,
    schema_widgets,
    static_figures,
    verdict_view,
)
from frontend.views.heatmap import styled_fragment

UPLOAD_TYPES = ["txt", "csv", "jsonl"]
MAX_VARIANTS = 8

st.title("Attribute your text")
st.caption("Which words matter for the task, which neurons fire on them, and what pruning left of those "
           "neurons. Upload .txt (one text per blank-line-separated paragraph), .csv (a `text` column) "
           "or .jsonl (a `text` field, and optionally that text's own influential `words`).")
ui.how_to_read("attribute")
state = ui.view_state()
api = ui.client()

c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
model = ui.pick_model(api, state.model, key="at_model", container=c1)
tasks = [row["name"] for row in ui.fetch(api.nsa_tasks, what="NSA tasks") or []] or ["sentiment"]
task = c2.selectbox("Task type", tasks, key="at_task")
# Bounds, defaults and help come from the backend's NsaOptions (GET /nsa/options).
nsa_options = (ui.fetch(api.nsa_options, what="NSA options") or {}).get("properties", {})
top_k = schema_widgets.field_widget(c3, "top_k", nsa_options.get("top_k", {"type": "integer", "minimum": 1}),
                                    key="at_top_k", label="Top-k neurons")
ablate = schema_widgets.field_widget(c4, "ablate", nsa_options.get("ablate", {"type": "boolean"}), key="at_ablate",
                                     label="Ablation check")
variants = (ui.fetch(api.variants, base=model, what="variants") or []) if model else []
variant_ids = [v["id"] for v in variants]
chosen_variants = st.multiselect(
    "Pruned variants to compare", variant_ids, max_selections=MAX_VARIANTS, key="at_variants",
    default=[v for v in state.variants if v in variant_ids][:MAX_VARIANTS],
    format_func=lambda vid: nsa_view.variant_label(next(v for v in variants if v["id"] == vid)),
)

mode = st.radio("Input", ["Paste text", "Upload a file"], horizontal=True, key="at_mode")
pasted, uploaded = "", None
if mode == "Paste text":
    pasted = st.text_area("Text", height=120, key="at_text",
                          placeholder="The movie was painfully slow, but the acting was beautiful.")
else:
    uploaded = st.file_uploader("Text file", type=UPLOAD_TYPES, key="at_file")

split = schema_widgets.field_widget(st, "split", nsa_options.get("split", {"type": "boolean", "default": True}),
                                    key="at_split", label="Held-out figures (cross-fitting)")
common = {"model": model, "task": task, "variants": chosen_variants, "top_k": int(top_k), "ablate": ablate,
          "split": split}
if st.button("Run NSA", type="primary", key="at_run"):
    with st.spinner("Running NSA…"):
        if uploaded is not None:
            envelope = ui.fetch(api.nsa_upload, uploaded.name, uploaded.getvalue(), common, what="NSA")
        elif pasted.strip():
            envelope = ui.fetch(api.nsa, {**common, "text": pasted}, what="NSA")
        else:
            st.warning("Paste a text or upload a file first.")
            envelope = None
    if envelope is not None:
        st.session_state["at_result"] = envelope["id"]
finished_job_result = verdict_view.dataset_job(api, common, "at")
if finished_job_result:
    st.session_state["at_result"] = finished_job_result

result_id = st.session_state.get("at_result") or state.result
if not result_id:
    st.stop()
envelope, result = ui.checked_nsa_result(result_id)
request = envelope.get("request", {})
ui.publish(ViewState(model=result["model"]["name"], variants=tuple(v["id"] for v in result.get("variants", [])),
                     result=result_id))

st.divider()
texts = result.get("texts", [])
st.subheader(f"Result `{result_id}` \u00b7 {len(texts)} text(s) \u00b7 task {result.get('task')}")
for warning in result.get("warnings", []):
    st.caption(f":material/warning: {warning}")

st.markdown("**Influential words** and where they came from")
st.dataframe(nsa_view.influential_words_table(result), hide_index=True, key="at_words_table")
for text in texts:
    influential = text.get("influential", {})
    details = []
    if influential.get("note"):
        details.append(influential["note"])
    if influential.get("missing"):
        details.append("not in the text: " + ", ".join(influential["missing"]))
    if influential.get("rejected"):
        rejected = ", ".join(f"{r.get('word')} ({r.get('reason')})" for r in influential["rejected"])
        details.append("rejected: " + rejected)
    if influential.get("raw_generation") or details:
        with st.expander(f"Text {text['index']}: source {influential.get('source')}"):
            st.text(nsa_view.text_preview(text["text"], 400))
            if influential.get("raw_generation"):
                st.markdown("Model's answer:")
                st.code(influential["raw_generation"], language=None)
            for line in details:
                st.caption(line)

all_words: list[str] = []
for text in texts:
    all_words += [w for w in nsa_view.words_of_text(result, text["index"]) if w not in all_words]
edited = st.text_input("Edit the influential words (comma-separated) and rerun", value=", ".join(all_words),
                       key=f"at_edit_{result_id}")
if st.button("Rerun with these words", key="at_rerun"):
    words = nsa_view.parse_word_list(edited)
    if not words:
        st.warning("Give at least one word.")
    else:
        rerun_request = {
            "model": result["model"]["name"], "texts": [t["text"] for t in texts], "words": words,
            "task": result.get("task", task), "variants": [v["id"] for v in result.get("variants", [])],
            "top_k": int(result.get("settings", {}).get("top_k", top_k)),
            "ablate": bool(request.get("ablate", False)), "split": bool(request.get("split", True)),
        }
        with st.spinner("Running NSA with your words…"):
            rerun = ui.fetch(api.nsa, rerun_request, what="NSA")
        if rerun is not None:
            st.session_state["at_result"] = rerun["id"]
            st.rerun()

keys = nsa_view.neuron_keys(result)
if keys:
    c1, c2 = st.columns([1, 3])
    neuron_pick = c1.selectbox("Neuron", keys, key=f"at_neuron_{result_id}",
                               format_func=lambda key: f"layer {key[0]}, neuron {key[1]}")
    text_pick = c2.selectbox("Text", range(len(texts)), key=f"at_text_pick_{result_id}",
                             format_func=lambda i: f"{i}: {nsa_view.text_preview(texts[i]['text'], 70)}")
    fragment = nsa_view.neuron_heatmap_html(result, text_pick, neuron_pick[0], neuron_pick[1])
    if fragment:
        st.html(styled_fragment(fragment))
    ui.figure_downloads(lambda: static_figures.neuron_heatmap_static(result, text_pick, *neuron_pick),
                        f"heatmap-{result_id}-L{neuron_pick[0]}-N{neuron_pick[1]}-text{text_pick}",
                        key="at_heatmap_figure")
    st.dataframe(display.readable_neuron_table(nsa_view.neuron_table(result)), hide_index=True, key="at_neurons")

if result.get("comparison"):
    st.markdown("**What pruning did to these neurons**, beyond their layers, with 95% intervals")
    for line in nsa_stats.headline_lines(result):
        st.markdown(line)
    st.dataframe(nsa_stats.statistics_table(result), hide_index=True, key="at_statistics", column_config={
        c: st.column_config.NumberColumn(format="percent") for c in ("mean", "95% low", "95% high")})

verdict_view.render(result, result_id, "at")
if result.get("ablation"):  # one text: the in-sample ablation (two or more: in the verdict above)
    st.markdown(f"**Ablation check**: {result['ablation']['reading']}")
    with st.expander("Ablation check (JSON)"):
        st.json(result["ablation"], expanded=False)

d1, d2, d3, d4 = st.columns(4)
if result.get("comparison"):  # intervals exist only where variants were compared
    d4.download_button("Statistics (CSV)", nsa_stats.statistics_csv(result),
                       file_name=f"nsa-{result_id}-stats.csv", mime="text/csv", key="at_dl_stats")
d1.download_button("Result (JSON)", json.dumps(result, indent=1), file_name=f"nsa-{result_id}.json",
                   mime="application/json", key="at_dl_json")
d2.download_button("Neurons (CSV)", nsa_view.result_csv(result), file_name=f"nsa-{result_id}.csv",
                   mime="text/csv", key="at_dl_csv")
d3.download_button("Heatmaps (HTML)", nsa_view.result_heatmap_document(result),
                   file_name=f"nsa-{result_id}.html", mime="text/html", key="at_dl_html")
