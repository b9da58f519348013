"""Variants & jobs: create pruned variants and evaluations, watch their progress, read failures.

The job list refreshes itself every two seconds while something is queued or running.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from frontend import ui
from frontend.views import display, jobs_view, nsa_view, prune_form

REFRESH_S = 2.0
SUBMITTED_KEY = "jobs_last_submitted"  # the last job this session queued
SHOWN_FAILURES = 10

st.title("Variants & jobs")
ui.how_to_read("jobs")
api = ui.client()

model = ui.pick_model(api, key="jobs_model")
calibration_rows = ui.fetch(api.calibration_sets, what="calibration sets") or []
tasks = ui.fetch(api.tasks, what="tasks") or []
variants = (ui.fetch(api.variants, base=model, what="variants") or []) if model else []

prune_column, evaluate_column = st.columns(2)
with prune_column, st.container(border=True):
    body = prune_form.prune_form(
        api, ui, model, ui.fetch(api.methods, what="pruning methods") or [],
        ui.fetch(api.request_schema, "PruneRequest", what="the prune request's schema") or {}, calibration_rows)
    if body is not None:
        accepted = ui.fetch(api.create_variant, body, what="prune")
        if accepted:
            st.session_state[SUBMITTED_KEY] = (
                f"Prune job `{accepted['job']['id']}` queued"
                + (f" \u2192 variant `{accepted['variant_id']}`" if accepted.get("variant_id") else ""))

with evaluate_column, st.form("evaluate_form"):
    st.subheader("Evaluate")
    targets = ["dense", *[v["id"] for v in variants]]
    labels = {v["id"]: nsa_view.variant_label(v) for v in variants} | {"dense": "dense model"}
    target = st.selectbox("Model or variant", targets, key="jobs_target", format_func=lambda t: labels[t])
    offline = [t["name"] for t in tasks if t.get("offline")]
    chosen_tasks = st.multiselect("Tasks", [t["name"] for t in tasks], default=offline[:4], key="jobs_tasks",
                                  help="Tasks whose data ships with the install work offline")
    limit = st.number_input("Examples per task (0 = all)", min_value=0, value=50, key="jobs_limit")
    if st.form_submit_button("Evaluate", type="primary"):
        if not chosen_tasks:
            st.warning("Choose at least one task.")
        else:
            accepted = ui.fetch(api.create_evaluation, {
                "model": model, "variant": None if target == "dense" else target, "tasks": chosen_tasks,
                "limit": int(limit) or None}, what="evaluate")
            if accepted:
                st.session_state[SUBMITTED_KEY] = f"Evaluation job `{accepted['job']['id']}` queued"

# Kept in the session, not drawn once: a job that ends at once reruns the page (see job_list),
# and the confirmation must survive that rerun.
if st.session_state.get(SUBMITTED_KEY):
    st.success(st.session_state[SUBMITTED_KEY])

st.subheader("Jobs")
jobs = ui.fetch(api.jobs, what="jobs") or []


@st.fragment(run_every=REFRESH_S if jobs_view.any_active(jobs) else None)
def job_list() -> None:
    """Running and queued jobs as progress bars, failures as messages, finished jobs as a table."""
    current = ui.fetch(api.jobs, what="jobs") or []
    if not current:
        st.caption("No job yet.")
        return
    counts: dict[str, int] = {}
    for job in current:
        counts[job["state"]] = counts.get(job["state"], 0) + 1
    st.caption(" \u00b7 ".join(f"{count} {state}" for state, count in counts.items()))
    for job in current:
        if job["state"] in jobs_view.ACTIVE_STATES:
            bar, button = st.columns([6, 1], vertical_alignment="center")
            bar.progress(min(max(float(job.get("progress") or 0.0), 0.0), 1.0),
                         text=f"**{job['state']}** {jobs_view.describe_job(job)} \u2014 {job.get('message') or ''}")
            cancel = button.button("Cancel", key=f"jobs_cancel_{job['id']}",
                                   help="A queued job is dropped; a running one stops after its current step")
            if cancel and ui.fetch(api.cancel_job, job["id"], what="cancel") is not None:
                st.rerun()  # show the new state (a failure stays on screen instead)
    for job in [job for job in current if job["state"] in ("failed", "interrupted")][:SHOWN_FAILURES]:
        st.error(f"{jobs_view.describe_job(job)} \u2014 {job['state']}: "
                 f"{job.get('error') or job.get('message') or 'no message'}")
    done = jobs_view.jobs_frame([job for job in current if job["state"] in ("succeeded", "cancelled")])
    if not done.empty:
        st.dataframe(done.drop(columns=["progress"]), hide_index=True, key="jobs_done")
    if jobs_view.any_active(current) != jobs_view.any_active(jobs):
        st.rerun()  # a job started or all ended since the page drew: refresh variants and auto-refresh


job_list()

st.subheader("Variants")
if variants:
    st.dataframe(display.readable_table(pd.DataFrame(variants), percents=["achieved_sparsity"]),
                 hide_index=True, key="jobs_variants")
else:
    st.caption("No pruned variant of this model yet.")
