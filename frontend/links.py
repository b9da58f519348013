"""Views as links: the URL query parameters that reproduce what a page shows.

Every page keeps its choices (model, variants, result id, text, layer, neuron, …) in
``st.query_params`` through these functions, so a copied URL opens the same view. Parsing is
forgiving: a malformed parameter is dropped (the page falls back to its default), never an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from urllib.parse import urlencode, urlsplit, urlunsplit

# Page url_path values (st.Page(url_path=...)). The explorer is the default page, which Streamlit
# serves at the root: shared URLs look like /?result=...&layer=3 and /attribute?result=...
PAGE_PATHS = {
    "explorer": "",
    "attribute": "attribute",
    "calibration": "calibration",
    "accuracy": "accuracy",
    "jobs": "jobs",
    "neuron": "neuron",
    "changed": "changed",
}


def _first(value) -> str | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _int(value) -> int | None:
    text = _first(value)
    try:
        number = int(text) if text is not None else None
    except ValueError:
        return None
    return number if number is not None and number >= 0 else None


def _list(value) -> tuple[str, ...]:
    if isinstance(value, list | tuple):
        items = [part for item in value for part in str(item).split(",")]
    else:
        items = (_first(value) or "").split(",")
    return tuple(dict.fromkeys(item.strip() for item in items if item.strip()))


@dataclass(frozen=True)
class ViewState:
    """The shareable part of a page's state; unset fields are left out of the URL."""

    model: str | None = None
    variants: tuple[str, ...] = field(default_factory=tuple)
    result: str | None = None  # a stored NSA result id
    text: int | None = None  # which text of the result
    layer: int | None = None
    neuron: int | None = None
    method: str | None = None
    sparsity: str | None = None
    task: str | None = None
    kind: str | None = None  # accuracy table kind
    index: str | None = None  # a neuron index id (neuron and "what changed" pages)
    variant: str | None = None  # the one variant a neuron page compares with
    token: str | None = None  # "what changed": search neurons by this token

    @classmethod
    def from_params(cls, params: Mapping) -> ViewState:
        values: dict[str, object] = {}
        for spec in fields(cls):
            raw = params.get(spec.name)
            if spec.name == "variants":
                values[spec.name] = _list(raw)
            elif spec.name in ("text", "layer", "neuron"):
                values[spec.name] = _int(raw)
            else:
                values[spec.name] = _first(raw)
        return cls(**values)  # type: ignore[arg-type]  # each field got its own parser's type

    def to_params(self) -> dict[str, str]:
        params = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None or value == ():
                continue
            params[spec.name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return params


def app_root(current_url: str) -> str:
    """The app's root URL from the URL of any of its pages (``st.context.url``)."""
    parts = urlsplit(current_url)
    path = parts.path.rstrip("/")
    for page_path in PAGE_PATHS.values():
        if page_path and path.endswith("/" + page_path):
            path = path[: -len(page_path) - 1]
            break
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def page_href(page: str, state: ViewState, current_url: str | None = None) -> str:
    """A link to a view: absolute when the current URL is known, else relative to the app's root
    (pages are siblings under it, so ``neuron?layer=3`` from any page opens the neuron page)."""
    if current_url:
        return share_url(current_url, page, state)
    query = urlencode(state.to_params())
    return (PAGE_PATHS[page] or "./") + (f"?{query}" if query else "")


def neuron_href(model: str | None, layer: int, neuron: int, *, index: str | None = None,
                variant: str | None = None, current_url: str | None = None) -> str:
    """The neuron page of (layer, neuron): every neuron number of the dashboard links here."""
    return page_href("neuron", ViewState(model=model, index=index, layer=int(layer), neuron=int(neuron),
                                         variant=variant), current_url)


def share_url(current_url: str, page: str, state: ViewState) -> str:
    """The absolute link of a view, e.g. ``http://host:8501/?result=abc&layer=3`` for the explorer."""
    path = PAGE_PATHS[page]
    query = urlencode(state.to_params())
    return f"{app_root(current_url)}/{path}" + (f"?{query}" if query else "")
