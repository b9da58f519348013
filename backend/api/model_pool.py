"""The models the server keeps in memory: the default one always, others in an LRU under a budget.

Pruned variants are overlays on their base model (backend.pruning.variants): a request for a
variant swaps its tensors into the held base model under the compute lock, so only base models
take memory here. A model that is not the default is loaded on first use and the least recently
used ones are dropped while the budget is exceeded.

Model references coming over HTTP are stricter than on the command line: a local directory is
accepted only when the server itself lists it (``list_models``), never a path a client made up.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.errors import NotFoundError, UserError

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

# A hub id: owner/name, no dot segments, no scheme, no backslashes.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_.-]{1,96}$")


def model_bytes(loaded: LoadedModel) -> int:
    model = loaded.model
    return sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers()
    )


class ModelPool:
    def __init__(
        self, settings, *, default=None, budget_bytes: int, loader: Callable | None = None
    ):
        self.settings = settings
        self.budget_bytes = budget_bytes
        self._default = default
        self._others: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loader = loader

    # ------------------------------------------------------------------ the default model

    @property
    def default(self):
        return self._default

    def set_default(self, loaded: LoadedModel) -> None:
        self._default = loaded

    @property
    def default_name(self) -> str:
        return self._default.name if self._default is not None else self.settings.default_model

    # ------------------------------------------------------------------ references

    def loaded_names(self) -> list[str]:
        names = [self._default.name] if self._default is not None else []
        return names + list(self._others)

    def allowed_reference(self, reference: str | None) -> str:
        """The canonical name of a model a client may ask for; UserError otherwise."""
        if reference is None or reference == "":
            return self.default_name
        if not isinstance(reference, str) or len(reference) > 300:
            raise UserError("invalid model name")
        if reference in self.loaded_names() or reference == self.settings.default_model:
            return reference
        from backend.models.loader import list_models

        if reference in {row["name"] for row in list_models(self.settings)}:
            return reference
        if _HUB_ID.match(reference) and ".." not in reference:
            return reference
        raise UserError(
            f"unknown model {reference[:80]!r}: use a name from GET /models or a hub id like 'facebook/opt-125m'"
        )

    # ------------------------------------------------------------------ getting a model

    def get(self, reference: str | None):
        """The loaded model for a reference (loading it if needed). Call under the compute lock:
        loading is heavy, and eviction must not drop a model someone is using."""
        name = self.allowed_reference(reference)
        if self._default is not None and name == self._default.name:
            return self._default
        with self._lock:
            if name in self._others:
                self._others.move_to_end(name)
                return self._others[name]
        loaded = self._load(name)
        if self._default is None and name == self.settings.default_model:
            self._default = loaded
            return loaded
        with self._lock:
            self._others[name] = loaded
            self._evict(keep=name)
        return loaded

    def _load(self, name: str):
        if self._loader is not None:
            return self._loader(name)
        from backend.models.loader import load_model

        return load_model(name, settings=self.settings)

    def _evict(self, keep: str) -> None:
        while (
            len(self._others) > 1
            and sum(model_bytes(m) for m in self._others.values()) > self.budget_bytes
        ):
            oldest = next(iter(self._others))
            if oldest == keep:
                break
            del self._others[oldest]

    def require_default(self):
        if self._default is None:
            raise NotFoundError(f"the default model {self.settings.default_model!r} is not loaded")
        return self._default
