"""Accuracy tables: the paper's views of the results store, colour-scaled, sortable, as CSV; and
accuracy-vs-sparsity lines per task category.

Missing cells are blank, never zero: an evaluation that was not run is not a zero accuracy.
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.links import ViewState
from frontend.views import display, figures, protect_view, speed_view, static_figures, tables

KINDS = {
    "task-calibration": "Task x calibration set (mean over methods and sparsities)",
    "model-calibration": "Model x calibration set (one task)",
    "task-sparsity": "Task x sparsity",
    "task-seqlen": "Task x calibration sequence length",
    "method-calibration": "Method x calibration set",
    "category-calibration": "Task category x calibration set",
}
METRICS = ("acc,none", "acc_norm,none", "f1,none", "mcc,none")

st.title("Accuracy tables")
ui.how_to_read("accuracy")
state = ui.view_state()
api = ui.client()

models = ui.fetch(api.models, what="models") or []
names = [row["name"] for row in models]
tasks = ui.fetch(api.tasks, what="tasks") or []
task_names = [t["name"] for t in tasks]

c1, c2, c3, c4 = st.columns([3, 2, 2, 1])
kinds = list(KINDS)
kind = ui.pick("Table", kinds, state.kind, key="acc_kind", format_func=KINDS.get, container=c1)
model_options = ["all models", *names]
model_choice = ui.pick("Model", model_options, state.model, key="acc_model", container=c2)
model = None if model_choice == "all models" else model_choice
task = None
if kind == "model-calibration":
    task = ui.pick("Task", task_names, state.task or "sst2", key="acc_task", container=c3)
metric = c4.selectbox("Metric", METRICS, key="acc_metric", format_func=display.column_label)
ui.publish(ViewState(kind=kind, model=model, task=task))

payload = ui.fetch(api.table, kind, model=model, task=task, metric=metric, what=f"table {kind}")
if payload is not None:
    frame = tables.table_frame(payload)
    if frame.empty:
        st.info("No stored evaluation fills this table yet: evaluate variants on **Variants & jobs**.")
    else:
        st.dataframe(tables.style_accuracy(frame), hide_index=True, key="acc_table")
        st.caption("95% interval of each cell: mean \u00b1 1.96 \u00d7 the mean lm-eval stderr of its results "
                   "(exact for one result, an upper bound for a mean of several).")
        st.dataframe(tables.interval_frame(payload), hide_index=True, key="acc_intervals")
        st.markdown("**Difference to dense on the same examples** (paired bootstrap 95% interval; exact "
                    "McNemar p for one variant, sign-flip permutation p for a mean of several; "
                    "'not distinguishable' when the interval contains 0)")
        st.dataframe(tables.difference_frame(payload), hide_index=True, key="acc_differences")
        st.download_button("Download CSV", tables.csv_text(tables.long_frame(payload)),
                           file_name=f"prunelens-{kind}.csv", mime="text/csv", key="acc_csv")
        with st.expander("How many stored results each cell averages"):
            st.dataframe(tables.cell_counts(payload), hide_index=True, key="acc_counts")

st.subheader("Accuracy vs sparsity")
evaluations = ui.fetch(api.evaluations, base_model=model, what="evaluations") or []
lines = figures.accuracy_by_sparsity(evaluations, tasks, metric)
if lines.empty:
    st.caption("No stored evaluation with this metric yet.")
else:
    st.plotly_chart(figures.accuracy_sparsity_figure(lines), key="acc_lines")
    ui.figure_downloads(lambda: static_figures.accuracy_sparsity_static(lines), "accuracy-vs-sparsity",
                        key="acc_lines_figure")
    st.caption("Mean over methods and calibration sets; dense at 0 %. Diamonds: semi-structured N:M.")

st.subheader("Accuracy vs speed")
speeds = ui.fetch(api.speeds, what="speed measurements") or []
speed_task = st.selectbox("Task", task_names or ["sst2"], key="acc_speed_task",
                          index=(task_names.index("sst2") if "sst2" in task_names else 0))
speed_frame = speed_view.accuracy_speed_frame(evaluations, speeds, speed_task, metric)
if (speed_frame["variant_id"] != speed_view.DENSE_ID).sum() == 0:
    st.caption("No variant has both an evaluation on this task and a speed measurement yet: run "
               "`prunelens speed VARIANT` (docs/export.md).")
else:
    st.plotly_chart(speed_view.accuracy_speed_figure(speed_frame, speed_task), key="acc_speed")
    ui.figure_downloads(lambda: speed_view.accuracy_speed_static(speed_frame, speed_task), "accuracy-vs-speed",
                        key="acc_speed_figure")
    st.dataframe(speed_frame, hide_index=True, key="acc_speed_table")
    st.caption("Speed-up: dense ÷ variant forward time, median of interleaved repeats (bars: their range), "
               "measured on the device named in the table. Unstructured and 2:4 sparsity cannot speed up "
               "dense kernels (on CPU, ever); structured and depth-pruned variants run smaller models. "
               "Pareto front: the variants no other variant beats on both accuracy and speed.")

st.subheader("Protected neurons: NSA-protected vs matched-random vs unprotected")
experiments = ui.fetch(api.protect_experiments, what="protection experiments") or []
if not experiments:
    st.caption("No protection experiment stored yet: run `prunelens experiment protect` "
               "(docs/guided-pruning.md).")
else:
    chosen = st.selectbox("Experiment", [row["id"] for row in experiments], key="acc_protect_experiment")
    document = ui.fetch(api.protect_experiment, chosen, what="protection experiment")
    if document is not None:
        st.caption(protect_view.experiment_caption(document))
        st.dataframe(protect_view.experiment_frame(document), hide_index=True, key="acc_protect_table")
        st.caption("Accuracy 95% interval from lm-eval's stderr; Δ: paired difference to the unprotected "
                   "arm on the same examples (bootstrap 95% interval, exact McNemar p); 'not "
                   "distinguishable' when the interval contains 0.")
