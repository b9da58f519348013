"""What determines a variant: the prune configuration, its identity, and the code version in it.

A variant id is a readable slug plus a hash of the identity: base model, method, calibration
(a user file by its content), spec, windows, seed, the method's validated options and the
version of the code that computes it. That version is a hash of the source of the engine's
modules (``PRODUCING_MODULES``: engine, layer inputs, statistics, spec, hooks, the calibration
data modules that pick, format and cut its text) and of the method's own modules with every
``backend`` module they import, found by reading their imports (``method_modules``), so a
helper a method uses is covered without a list to keep: any edit there gives new ids, and
variants stored by other code are listed as stale and never reused.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from backend.errors import UserError
from backend.pruning.protection import Protection
from backend.pruning.registry import MethodOptions, PruningMethod, get_method, methods
from backend.pruning.spec import SparsitySpec

# The engine's modules whose code decides every variant's tensors; a method's own modules and what
# they import are found by ``method_modules``. tests/unit/test_code_version.py fails when the engine
# imports a backend module that is neither here nor named there as computing nothing.
PRODUCING_MODULES = (
    "backend.pruning.config",
    "backend.pruning.engine",
    "backend.pruning.layers",
    "backend.pruning.registry",
    "backend.pruning.spec",
    "backend.pruning.stats",
    "backend.pruning.protection",
    "backend.models.adapters",
    "backend.models.hooks",
    # the calibration text: which documents, their formatting and the windows cut from them
    "backend.data.windows",
    "backend.data.sources",
    "backend.data.corpus",
    "backend.data.offline_sets",
    "backend.data.hub_sets",
    "backend.data.prompt_formats",
    "backend.data.user_files",
    # the sparsity profile, the refinement and depth pruning, behind every method that uses them
    "backend.pruning.profile_options",
    "backend.pruning.owl",
    "backend.pruning.dsnot",
    "backend.pruning.depth",
)


@cache
def _source_digest(path: str) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _source_file(module_name: str) -> str:
    path = inspect.getsourcefile(importlib.import_module(module_name))
    assert path is not None, f"{module_name} is a Python source file (all PruneLens code is)"
    return path


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, which run no code."""
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(module_name: str) -> set[str]:
    """The ``backend`` modules that ``module_name``'s source imports, at the top or inside a function."""
    module = importlib.import_module(module_name)
    package = module_name if hasattr(module, "__path__") else module_name.rpartition(".")[0]
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(Path(_source_file(module_name)).read_bytes())]
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            continue
        pending.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                    if node.level else node.module or "")
            found.add(base)
            if _is_backend(base) and hasattr(importlib.import_module(base), "__path__"):
                # ``from backend.pruning import neuron_math``: the names may be modules
                found.update(f"{base}.{alias.name}" for alias in node.names
                             if importlib.util.find_spec(f"{base}.{alias.name}") is not None)
    return {name for name in found if _is_backend(name)}


def _is_backend(name: str) -> bool:
    return name == "backend" or name.startswith("backend.")


@cache
def imported_closure(roots: frozenset[str]) -> frozenset[str]:
    """``roots`` and every ``backend`` module they import, directly or through one another."""
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(_imported_modules(name) - seen)
    return frozenset(seen)


def method_modules(method: PruningMethod[Any]) -> frozenset[str]:
    """The modules holding ``method``'s code (its entry's functions and options) and every
    ``backend`` module they import: the helpers of a method, derived, never listed by hand."""
    parts = (inspect.unwrap(method.prune), method.options, method.check, method.needs_for, method.selection,
             method.blocks)
    return imported_closure(frozenset(part.__module__ for part in parts if part is not None))


def code_version(method: PruningMethod[Any]) -> str:
    """Hash of the source of the modules producing ``method``'s variants (12 hex digits).

    Each file counts by its content alone, in an order that does not depend on where it lies:
    moving a module leaves the version as it was unless the moved code (or an import) changed.
    """
    names = set(PRODUCING_MODULES) | method_modules(method)
    digest = hashlib.sha256()
    for file_digest in sorted(_source_digest(_source_file(name)) for name in names):
        digest.update(file_digest)
    return digest.hexdigest()[:12]


def is_stale(manifest: dict) -> bool:
    """True for a variant written by other code than this process runs (or by a removed method)."""
    method = methods().get(manifest.get("method") or "")
    return method is None or manifest.get("code_version") != code_version(method)


@dataclass(frozen=True, init=False)
class PruneConfig:
    """Everything that determines a variant; method options by name (``alpha=0.7``) or as ``options``."""

    method: str
    calibration: str = "c4"
    spec: SparsitySpec = field(default_factory=lambda: SparsitySpec.unstructured(0.5))
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    batch_size: int | None = None  # windows per forward; does not change the result
    options: dict = field(default_factory=dict)  # as given; validated by the method's options model
    # Protected neurons (backend.pruning.protection); an empty one is the same as None.
    protection: Protection | None = None

    def __init__(self, method: str, calibration: str = "c4", spec: SparsitySpec | None = None,
                 nsamples: int = 128, seqlen: int = 2048, seed: int = 0, batch_size: int | None = None,
                 options: dict | None = None, protection: Protection | None = None,
                 **option_values) -> None:
        values = {"method": method, "calibration": calibration,
                  "spec": spec or SparsitySpec.unstructured(0.5), "nsamples": nsamples,
                  "seqlen": seqlen, "seed": seed, "batch_size": batch_size,
                  "options": {**(options or {}), **option_values},
                  "protection": None if protection is None or protection.empty else protection}
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def info(self) -> PruningMethod[Any]:
        return get_method(self.method)

    @property
    def method_options(self) -> MethodOptions:
        return self.info.parse_options(self.options)

    @property
    def uses_calibration(self) -> bool:
        """Whether this variant reads calibration data (the method's needs, OWL or DSnoT)."""
        return self.info.uses_calibration(self.method_options)

    def validate(self) -> None:
        """UserError for anything the engine would refuse, before any work."""
        method = self.info
        method.check_request(self.method_options, self.spec)
        if self.protection is not None:
            require_protection_support(method)
            if getattr(self.method_options, "refine", "none") != "none":
                raise UserError("--refine dsnot does not take protected neurons: its swaps would not respect them")
        if self.uses_calibration and not self.calibration.startswith("file:"):
            from backend.data.sources import list_text_sets

            known = [entry["name"] for entry in list_text_sets()]
            if self.calibration not in known:
                raise UserError(f"unknown calibration set {self.calibration!r}; known: "
                                f"{', '.join(known)}, or file:PATH")
        if self.nsamples <= 0:
            raise UserError(f"nsamples must be positive, got {self.nsamples}")
        if self.seqlen <= 0:
            raise UserError(f"seqlen must be positive, got {self.seqlen}")


def require_protection_support(method: PruningMethod[Any]) -> None:
    """UserError when ``method`` does not honour protected neurons (structured methods, e.g.)."""
    if not method.protects:
        protecting = ", ".join(name for name, entry in methods().items() if entry.protects)
        raise UserError(f"method {method.name!r} does not take protected neurons; "
                        f"protection works with {protecting}")


def calibration_identity(name: str) -> str:
    """A user file is identified by its content, so editing it gives a new variant id."""
    if name.startswith("file:"):
        path = Path(name[5:]).expanduser()
        if not path.is_file():
            raise UserError(f"calibration file not found: {path}")
        return f"file:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    return name


def variant_identity(base: str, config: PruneConfig, seqlen: int) -> dict:
    """The hashed part of a variant id. ``seqlen``: the window length used (capped by the model)."""
    uses_data = config.uses_calibration
    return {
        "code_version": code_version(config.info),
        "base_model": base,
        "method": config.method,
        "calibration": calibration_identity(config.calibration) if uses_data else "none",
        # A depth method's amount is its option drop_blocks; the spec it ignores stays out of the id.
        "spec": None if config.info.depth else asdict(config.spec),
        "nsamples": config.nsamples if uses_data else 0,
        "seqlen": seqlen if uses_data else 0,
        "seed": config.seed if uses_data else 0,
        "options": config.info.dump_options(config.method_options),
        # Only when something is protected: an empty protection keeps the unprotected id.
        **({"protection": config.protection.identity()} if config.protection is not None else {}),
    }


def identity_slug(identity: dict, spec: SparsitySpec) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    options = identity.get("options") or {}
    if identity["spec"] is None:
        spec_slug = f"drop{options.get('drop_blocks')}"
    else:
        spec_slug = {"unstructured": f"s{spec.ratio:g}", "nm": f"{spec.n}of{spec.m}",
                     "neurons": f"n{spec.ratio:g}"}[spec.kind]
    # The profile and the refinement are read at a glance in the id.
    spec_slug += "-owl" if options.get("sparsity_profile") == "owl" else ""
    spec_slug += "-dsnot" if options.get("refine") == "dsnot" else ""
    calibration = identity["calibration"]
    calib_slug = "file" if calibration.startswith("file:") else calibration
    protected = f"-protect{identity['protection']['count']}" if identity.get("protection") else ""
    raw = f"{identity['method']}-{calib_slug}-{spec_slug}{protected}-{digest}".lower()
    return re.sub(r"[^a-z0-9._-]", "-", raw)
