"""Study reports: every `prunelens study` run with its verdict per claim, and one run's claims,
its dense-vs-chance table and the views behind each verdict. Reads GET /studies and /studies/{run}.
"""

from __future__ import annotations

import streamlit as st

from frontend import ui
from frontend.links import ViewState
from frontend.views import studies_view

st.title("Study reports")
ui.how_to_read("studies")
state = ui.view_state()
api = ui.client()

runs = ui.fetch(api.studies, what="study reports")
if runs is not None and not runs:
    st.info("No study has been run yet: `prunelens study studies/nsa-paper.yaml --profile quick` "
            "(or POST /studies) writes one.")
if runs:
    st.dataframe(studies_view.runs_frame(runs), hide_index=True, key="st_runs")
    names = [row["run"] for row in runs]
    run = ui.pick("Study run", names, state.run, key="st_run")
    ui.publish(ViewState(run=run))
    report = ui.fetch(api.study, run, what=f"study report {run}") if run else None
    if report is not None:
        settings = report.get("settings") or {}
        st.caption(f"Study **{report['study']}**, profile **{report['profile']}**: model `{settings.get('model')}`, "
                   f"{settings.get('limit') or 'all'} examples per task, alpha {settings.get('alpha')} "
                   f"(Holm within a claim); took {report.get('seconds')} s.")
        st.subheader("Claims")
        st.dataframe(studies_view.claims_frame(report), hide_index=True, key="st_claims")
        st.subheader("Dense model against chance")
        st.dataframe(studies_view.chance_frame(report), hide_index=True, key="st_chance")
        for claim in report.get("claims", []):
            with st.expander(f"{claim['id']}: {claim.get('title', '')} \u2014 {claim['verdict']}"):
                if claim.get("ours"):
                    st.markdown(f"**Ours:** {claim['ours']}")
                st.markdown(f"**Why:** {claim.get('why', '')}")
                for note in claim.get("notes", []):
                    st.markdown(f"- {note}")
                links = studies_view.claim_links(report, claim)
                if links:
                    st.markdown(" \u00b7 ".join(f"[{label}]({href})" for label, href in links))
