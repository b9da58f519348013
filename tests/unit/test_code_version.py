"""The code version in variant ids covers a method's helper modules without a hand-kept list: they
are found by reading the imports; an edit to any of them changes the version, a move does not, and
the engine's own list fails this test when the engine imports a module missing from it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from backend.pruning import config as config_module
from backend.pruning.config import PRODUCING_MODULES, code_version, imported_closure, method_modules
from backend.pruning.registry import NoOptions, PruningMethod, get_method, methods

# Imported by the engine but deciding nothing about a variant's tensors (package markers, settings,
# errors, where variants and models are stored and loaded from). Anything else the engine imports
# must be in PRODUCING_MODULES.
COMPUTES_NOTHING = frozenset({
    "backend", "backend.config", "backend.data", "backend.errors", "backend.storage",
    "backend.models.loader", "backend.models.embedded", "backend.pruning.variants",
})


def _edited_copy(monkeypatch, tmp_path: Path, module_name: str) -> None:
    """Point ``module_name`` at a copy of its source with one more line (an edit)."""
    module = importlib.import_module(module_name)
    copy = tmp_path / Path(module.__file__).name
    copy.write_text(Path(module.__file__).read_text(encoding="utf-8") + "\n# an edit\n", encoding="utf-8")
    monkeypatch.setattr(module, "__file__", str(copy))
    config_module._source_digest.cache_clear()


def test_a_methods_helpers_are_found_from_its_imports():
    mi, wanda, flap = (method_modules(get_method(name)) for name in ("mi", "wanda", "flap"))
    assert {"backend.pruning.methods.mi", "backend.pruning.methods.mi_neurons", "backend.pruning.neuron_math",
            "backend.pruning.structured", "backend.pruning.registry", "backend.pruning.spec"} <= mi
    assert {"backend.pruning.methods.wanda", "backend.pruning.protection", "backend.pruning.stats"} <= wanda
    # registry.py names structured.py's selection type for annotations only: no code of it runs
    assert not wanda & {"backend.pruning.structured", "backend.pruning.neuron_math",
                        "backend.pruning.methods.mi_neurons"}
    assert "backend.pruning.methods.mi_neurons" not in flap


@pytest.mark.parametrize("helper,changed,unchanged", [
    ("backend.pruning.methods.mi_neurons", "mi", "flap"),
    ("backend.pruning.neuron_math", "structured-obs", "sparsegpt"),
    ("backend.pruning.structured", "random-neurons", "wanda"),
    ("backend.pruning.protection", "wanda", None),
])
def test_an_edit_to_a_helper_changes_the_version_of_the_methods_using_it(tmp_path, monkeypatch, helper,
                                                                          changed, unchanged):
    before = {name: code_version(method) for name, method in methods().items()}
    _edited_copy(monkeypatch, tmp_path, helper)
    assert code_version(get_method(changed)) != before[changed]
    if unchanged is not None:
        assert code_version(get_method(unchanged)) == before[unchanged]


def test_a_new_method_module_brings_its_helpers(tmp_path, monkeypatch):
    """A method defined outside backend (a plugin) counts the backend helpers it imports."""
    (tmp_path / "planted_method.py").write_text(
        '"""A method whose math lives in a backend helper."""\n'
        "from backend.pruning.methods.mi_neurons import gaussian_mutual_information\n\n\n"
        "def prune(layer, options, spec):\n"
        "    return []\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    planted = importlib.import_module("planted_method")
    try:
        method = PruningMethod(name="planted", description="test", prune=planted.prune, options=NoOptions)
        assert {"planted_method", "backend.pruning.methods.mi_neurons"} <= method_modules(method)
        before = code_version(method)
        edits = tmp_path / "edits"
        edits.mkdir()
        _edited_copy(monkeypatch, edits, "backend.pruning.methods.mi_neurons")
        assert code_version(method) != before
    finally:
        sys.modules.pop("planted_method", None)
        imported_closure.cache_clear()


def test_the_engine_imports_nothing_outside_the_producing_modules():
    engine = imported_closure(frozenset({"backend.pruning.engine", "backend.pruning.layers",
                                         "backend.pruning.config"}))
    missing = engine - set(PRODUCING_MODULES) - COMPUTES_NOTHING
    assert not missing, f"add to PRODUCING_MODULES (or to COMPUTES_NOTHING with a reason): {sorted(missing)}"


def test_a_moved_module_keeps_the_version(tmp_path, monkeypatch):
    """Files count by content, not by where they lie: the same source elsewhere, the same version."""
    before = code_version(get_method("sparsegpt"))
    module = importlib.import_module("backend.pruning.methods.sparsegpt")
    moved = tmp_path / "elsewhere" / "renamed_sparsegpt.py"
    moved.parent.mkdir()
    moved.write_bytes(Path(module.__file__).read_bytes())
    monkeypatch.setattr(module, "__file__", str(moved))
    config_module._source_digest.cache_clear()
    assert code_version(get_method("sparsegpt")) == before
