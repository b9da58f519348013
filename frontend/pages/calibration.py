"""Calibration side by side: fix model, method and sparsity; one column per calibration set.

Each column shows the same neuron on the same text (dense row + that variant, one colour scale
fixed by the dense model), the per-word drops, and the accuracy per task with its 95% interval and
its paired difference to the dense model on the same examples ("not distinguishable" when the
difference's interval contains 0). The text comes from a stored NSA result that compares these variants, or is
attributed now.
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.client import BackendError
from frontend.links import ViewState
from frontend.views import advice_view, display, jobs_view, nsa_view, tables
from frontend.views.heatmap import styled_fragment

MAX_VARIANTS = 8
# Monospace characters across the page, and those a row label takes: each column's heatmap wraps
# its text to its share of the page.
PAGE_CHARS, LABEL_CHARS = 110, 22
SAMPLE_TEXT = "It's a charming and often affecting journey, though the ending feels painfully rushed."

st.title("Calibration side by side")
st.caption("Variants that differ only in their calibration set, in columns: the same neuron on the same "
           "text, the per-word drops, and accuracy per task next to the dense model.")
ui.how_to_read("calibration")
state = ui.view_state()
api = ui.client()

c1, c2, c3 = st.columns([2, 1, 2])
model = ui.pick_model(api, state.model, key="cal_model", container=c1)
with st.expander("Which calibration set for a task? (advice before pruning)"):
    advice_task = st.text_input("Task", value="sst2", key="cal_advice_task", max_chars=64)
    try:
        advice = api.calibration_advice(advice_task.strip(), model) if model and advice_task.strip() else None
    except BackendError as exc:
        advice = None
        st.info(str(exc))
    if advice:
        st.caption(f"Proxy: {advice['proxy']}. Higher agreement ranks first.")
        st.dataframe(advice_view.advice_frame(advice), hide_index=True, key="cal_advice_table")
        for line in advice_view.validation_lines(advice):
            st.caption(line)
        st.markdown(f"**{advice['reading']}**")
variants = (ui.fetch(api.variants, base=model, what="variants") or []) if model else []
groups = jobs_view.calibration_groups(variants)
if not groups:
    st.info("No pruned variant of this model yet: create some on **Variants & jobs** (the demo prepares "
            "Wanda, SparseGPT and RIA with two calibration sets each).")
    st.stop()

methods = sorted({key[0] for key in groups if key[0]})
method = ui.pick("Method", methods, state.method, key="cal_method", container=c2)
group_keys = sorted((key for key in groups if key[0] == method), key=lambda k: (-len(groups[k]), str(k)))
preferred = next((key for key in group_keys if key[1] == state.sparsity), None)
group_key = ui.pick("Sparsity and calibration budget", group_keys, preferred, key="cal_group",
                    format_func=jobs_view.group_label, container=c3)
columns = groups[group_key][:MAX_VARIANTS]
ids = [v["id"] for v in columns]
if len(columns) < 2:
    st.caption("Only one calibration set for this choice: prune the same method and sparsity with another "
               "calibration set to compare.")

# A stored result comparing all of these variants; or attribute a text now.
summaries = ui.fetch(api.nsa_results, model=model, what="stored NSA results") or []
matching = [row for row in summaries if set(ids) <= set(row.get("variants", []))]
result_ids = [row["id"] for row in matching]
if state.result and state.result not in result_ids:
    result_ids.insert(0, state.result)
pending = st.session_state.pop("cal_pending", None)
if pending:
    if pending not in result_ids:
        result_ids.insert(0, pending)
    st.session_state["cal_result"] = pending
with st.expander("Attribute another text with these variants", expanded=not result_ids):
    text = st.text_area("Text", value=SAMPLE_TEXT, key="cal_text")
    if st.button("Run NSA", key="cal_run", type="primary"):
        with st.spinner("Running NSA on the dense model and each variant…"):
            envelope = ui.fetch(api.nsa, {"model": model, "text": text, "variants": ids}, what="NSA")
        if envelope is not None:
            st.session_state["cal_pending"] = envelope["id"]
            st.rerun()
if not result_ids:
    st.stop()
previews = {row["id"]: row["preview"] for row in summaries}
if st.session_state.get("cal_result") not in result_ids:
    st.session_state["cal_result"] = result_ids[0]
result_id = st.selectbox("Text (stored NSA result)", result_ids, key="cal_result",
                         format_func=lambda rid: (
                             f"{nsa_view.text_preview(str(previews.get(rid, rid)), 70)} \u00b7 {rid}"))
envelope, result = ui.checked_nsa_result(result_id)
present = [vid for vid in ids if vid in nsa_view.variant_labels(result)]
keys = nsa_view.neuron_keys(result)
texts = result.get("texts", [])
if not keys or not texts:
    st.info("This result selected no neuron.")
    st.stop()

c1, c2 = st.columns([1, 3])
if st.session_state.get("cal_neuron") not in keys:
    wanted = (state.layer, state.neuron)
    st.session_state["cal_neuron"] = wanted if wanted in keys else keys[0]
neuron = c1.selectbox("Neuron", keys, key="cal_neuron", format_func=lambda k: f"layer {k[0]}, neuron {k[1]}")
if st.session_state.get("cal_text_pick") not in range(len(texts)):
    st.session_state["cal_text_pick"] = state.text if state.text is not None and state.text < len(texts) else 0
text_index = c2.selectbox("Text of the result", range(len(texts)), key="cal_text_pick",
                          format_func=lambda i: f"{i}: {nsa_view.text_preview(texts[i]['text'], 70)}")
ui.publish(ViewState(model=model, method=method, sparsity=group_key[1], result=result_id, text=text_index,
                     layer=neuron[0], neuron=neuron[1]))

drops = nsa_view.word_drops(result, text_index)
labels = nsa_view.variant_labels(result)
for variant, column in zip(columns, st.columns(len(columns)), strict=True):
    with column:
        st.subheader(str(variant.get("calibration")))
        st.caption(f"`{variant['id']}` \u00b7 achieved sparsity "
                   f"{(variant.get('achieved_sparsity') or 0):.1%}")
        if variant["id"] not in present:
            st.caption("Not in this NSA result.")
            continue
        fragment = nsa_view.neuron_heatmap_html(result, text_index, neuron[0], neuron[1], [variant["id"]],
                                                line_chars=max(12, PAGE_CHARS // len(columns) - LABEL_CHARS))
        if fragment:
            st.html(styled_fragment(fragment))
        label = labels[variant["id"]]
        wanted_columns = ["word", f"drop · {label}", f"baseline · {label}"]
        if not drops.empty and all(c in drops.columns for c in wanted_columns):
            shown = drops[wanted_columns].rename(columns={wanted_columns[1]: "drop (%)",
                                                          wanted_columns[2]: "all-neuron baseline (%)"})
            st.dataframe(display.readable_table(shown, drops=["drop (%)", "all-neuron baseline (%)"]),
                         hide_index=True, key=f"cal_drops_{variant['id']}")
        comparison = ui.fetch(api.compare, model, variant["id"], what="accuracy against dense") or []
        accuracy = tables.comparison_frame(comparison)
        if accuracy.empty:
            st.caption("No evaluation stored for this variant yet.")
        else:
            st.dataframe(tables.style_accuracy(accuracy, ["dense", "accuracy"], ["\u0394 accuracy"]),
                         hide_index=True, key=f"cal_acc_{variant['id']}")
            st.caption("95% intervals from lm-eval's stderr; \u0394 paired on the same examples: bootstrap "
                       "interval, exact McNemar p. 'not distinguishable': the interval contains 0.")
