"""Streamlit glue shared by the pages: the backend client, error display, and URL state.

Pages never catch exceptions themselves: they go through ``fetch`` (shows the backend's
message, returns None) so no page can show a traceback for something the backend said.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from frontend.client import BackendClient, BackendError, BackendUnavailable
from frontend.links import ViewState

T = TypeVar("T")

_injected: BackendClient | None = None


def use_client(client: BackendClient | None) -> None:
    """Make every page talk to ``client`` (tests: one wired to the in-process FastAPI app)."""
    global _injected
    _injected = client


@st.cache_resource(show_spinner=False)
def _environment_client() -> BackendClient:
    return BackendClient()


def client() -> BackendClient:
    return _injected if _injected is not None else _environment_client()


def unreachable_notice(exc: BackendError) -> None:
    st.error(f"**Backend unreachable.** {exc}", icon=":material/power_off:")


def fetch(call: Callable[..., T], *args, what: str = "", **kwargs) -> T | None:
    """Run one client call; on failure show the backend's message and return None.

    An unreachable backend stops the page after one notice: every later call would fail the same way.
    """
    try:
        return call(*args, **kwargs)
    except BackendUnavailable as exc:
        unreachable_notice(exc)
        st.stop()
    except BackendError as exc:
        prefix = f"{what}: " if what else ""
        if exc.status in (429, 503):
            wait = f" Try again in {exc.retry_after:.0f} s." if exc.retry_after else ""
            st.warning(f"{prefix}the backend is busy ({exc}).{wait}", icon=":material/hourglass_top:")
        else:
            st.error(f"{prefix}{exc}", icon=":material/error:")
    return None


def require_backend() -> dict | None:
    """Health check before drawing a page: one clear notice and stop when it does not answer."""
    try:
        return client().health()
    except BackendUnavailable as exc:
        unreachable_notice(exc)
    except BackendError as exc:
        st.error(f"Backend: {exc}")
    st.stop()


def view_state() -> ViewState:
    """The view the URL asks for."""
    return ViewState.from_params({key: st.query_params.get_all(key) for key in st.query_params})


def publish(state: ViewState) -> None:
    """Write the view into the URL (only when it changed, so reruns do not loop)."""
    wanted = state.to_params()
    current = {key: st.query_params.get(key) for key in st.query_params}
    if current != wanted:
        st.query_params.from_dict(wanted)


def pick(label: str, options: list, preferred: Any = None, *, key: str, format_func=str,
         help: str | None = None, container=st):
    """A selectbox that starts on ``preferred`` (from the URL) when it is one of the options."""
    if not options:
        return None
    index = options.index(preferred) if preferred in options else 0
    return container.selectbox(label, options, index=index, key=key, format_func=format_func, help=help)


def pick_model(api: BackendClient, preferred: str | None = None, *, key: str, container=st) -> str | None:
    """The model selectbox: the server's models, starting on ``preferred`` (from the URL) if it
    is one of them, else on the server's default model."""
    models = fetch(api.models, what="models") or []
    names = [row["name"] for row in models]
    default = next((row["name"] for row in models if row.get("default")), names[0] if names else None)
    return pick("Model", names, preferred or default, key=key, container=container)


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_nsa_result(base_url: str, client_id: int, result_id: str) -> dict:
    return client().nsa_result(result_id)


def nsa_result(result_id: str) -> dict | None:
    """A stored NSA result (immutable by id, so cached for the session's life)."""
    api = client()
    return fetch(_cached_nsa_result, api.base_url, id(api), result_id, what=f"NSA result {result_id}")


def checked_nsa_result(result_id: str) -> tuple[dict, dict]:
    """(envelope, result) of a stored NSA result whose schema this dashboard can draw; otherwise
    the problem is shown once and the page stops."""
    from frontend.views import nsa_view

    envelope = nsa_result(result_id)
    if envelope is None:
        st.stop()
    problem = nsa_view.check_schema(envelope["result"])
    if problem:
        st.error(problem)
        st.stop()
    return envelope, envelope["result"]


def how_to_read(page: str) -> None:
    """The page's short "how to read this", folded under the title."""
    from frontend.views.display import HOW_TO_READ

    with st.expander("How to read this", icon=":material/help:"):
        st.markdown(HOW_TO_READ[page])


def figure_downloads(build: Callable[[], Any], name: str, *, key: str) -> None:
    """SVG and PDF buttons for a matplotlib figure that is built only when one is clicked.

    ``build`` returns the figure (``frontend.views.static_figures``); it runs off the page
    script, on Streamlit's download thread, so drawing the page costs nothing.
    """
    from frontend.views.static_figures import FIGURE_FORMATS, MIME_TYPES, figure_bytes

    columns = st.columns([1] * len(FIGURE_FORMATS) + [6])  # buttons side by side, at the left
    for figure_format, column in zip(FIGURE_FORMATS, columns, strict=False):
        def figure_data(f: str = figure_format) -> bytes:  # default: this button's format
            return figure_bytes(build(), f)

        column.download_button(f"{figure_format.upper()}", data=figure_data,
                               file_name=f"{name}.{figure_format}", mime=MIME_TYPES[figure_format],
                               key=f"{key}_{figure_format}", on_click="ignore", icon=":material/download:",
                               help=f"Download this figure as {figure_format.upper()} (vector, fonts embedded)")
