"""Entry point of the PruneLens dashboard: `streamlit run frontend/app.py` (BACKEND_URL=...).

Declares the seven pages with ``st.navigation``; each page's ``url_path`` is part of the links
that reproduce a view. Before any page draws, one health check: an unreachable backend is
one clear notice, not five broken pages.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

try:
    import frontend  # noqa: F401  (installed with the project)
except ImportError:  # run from a plain checkout: streamlit puts frontend/, not the root, on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import streamlit as st

from frontend import ui
from frontend.links import PAGE_PATHS

HERE = Path(__file__).resolve().parent
log = logging.getLogger("prunelens.dashboard")

st.set_page_config(page_title="PruneLens", page_icon=":material/content_cut:", layout="wide")

PAGES = [
    st.Page(HERE / "pages" / "explorer.py", title="Neuron explorer", icon=":material/grid_on:",
            default=True),  # served at the root (PAGE_PATHS["explorer"] == "")
    st.Page(HERE / "pages" / "neuron.py", title="Neuron page", icon=":material/neurology:",
            url_path=PAGE_PATHS["neuron"]),
    st.Page(HERE / "pages" / "changed.py", title="What pruning changed", icon=":material/difference:",
            url_path=PAGE_PATHS["changed"]),
    st.Page(HERE / "pages" / "attribute.py", title="Attribute your text", icon=":material/edit_note:",
            url_path=PAGE_PATHS["attribute"]),
    st.Page(HERE / "pages" / "calibration.py", title="Calibration side by side",
            icon=":material/view_column:", url_path=PAGE_PATHS["calibration"]),
    st.Page(HERE / "pages" / "accuracy.py", title="Accuracy tables", icon=":material/table_chart:",
            url_path=PAGE_PATHS["accuracy"]),
    st.Page(HERE / "pages" / "jobs.py", title="Variants & jobs", icon=":material/pending_actions:",
            url_path=PAGE_PATHS["jobs"]),
]

page = st.navigation(PAGES)
health = ui.require_backend()
with st.sidebar:
    st.caption(f"Backend: `{ui.client().base_url}`")
    if health:
        st.caption(f"Model `{health.get('default_model')}` on {health.get('device') or '?'} "
                   f"\u00b7 v{health.get('version', '?')}")
        compute = health.get("compute") or {}
        if compute.get("busy"):
            st.caption(f":material/hourglass_top: busy: {compute.get('holder') or 'a job'}")
        if health.get("status") != "ok":
            st.warning(f"The backend has no model loaded: {health.get('error') or health.get('status')}")
try:
    page.run()
except Exception as exc:  # a bug or an unexpected answer: one readable line here, the traceback in the log
    log.exception("page %r failed", page.title)
    st.error(f"This page hit an internal error ({type(exc).__name__}: {exc}). "
             "The details are in the dashboard's log.", icon=":material/bug_report:")
