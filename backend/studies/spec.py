"""The study spec: claims with their grids, and profiles that shrink or grow them, read from YAML.

A spec names a model, run settings (example limit, calibration samples, seeds), and per claim
(C1-C6, ``backend.studies.claims``) the grid it needs. A profile (quick / embedded / 7b) replaces
settings and any field of any claim's grid, or leaves claims out. ``resolve`` returns the one
``ResolvedStudy`` a run uses; every problem in the file is one ``UserError`` line naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backend.errors import UserError

CLAIM_IDS = ("C1", "C2", "C3", "C4", "C5", "C6")
_GRID_FIELDS = ("methods", "calibrations", "sparsities", "seqlens", "tasks")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Settings(_Strict):
    """What every cell of a run shares."""

    model: str = Field(default="smollm2-135m-instruct", description="embedded name, hub id or local folder")
    limit: int | None = Field(default=200, ge=1, description="seeded examples per task (null: whole splits)")
    nsamples: int = Field(default=128, ge=1, description="calibration windows per variant")
    seed: int = Field(default=0, ge=0, description="calibration and test seed")
    batch_size: int = Field(default=16, ge=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="test level (Holm-corrected within a claim)")
    power: float = Field(default=0.8, gt=0, lt=1, description="power at which the minimum detectable effect is given")
    resamples: int = Field(default=2000, ge=100, description="permutation and bootstrap resamples")


class NsaRequest(_Strict):
    """NSA on ``n`` seeded labelled examples of ``dataset`` as NSA task ``task``."""

    dataset: str
    task: str
    category: str = Field(description="the evaluation category it stands for (sentiment, reasoning, ...)")
    n: int = Field(default=16, ge=4, description="texts (>= 4 for held-out figures)")
    top_k: int = Field(default=20, ge=1)


class Grid(_Strict):
    methods: tuple[str, ...] = ("wanda",)
    calibrations: tuple[str, ...] = ("c4",)
    sparsities: tuple[str, ...] = ("0.5",)
    seqlens: tuple[int, ...] = (2048,)
    tasks: tuple[str, ...] = ()
    dense: bool = Field(default=False, description="also evaluate the dense model (C3's sparsity 0, chance checks)")
    nsa: tuple[NsaRequest, ...] = ()

    @field_validator("sparsities", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(str(item) for item in value)
        return value


class Claim(_Strict):
    grid: Grid = Field(default_factory=Grid)
    margin: float | None = Field(default=None, gt=0, description="C2: the spread below which a task counts as robust")


class Profile(_Strict):
    description: str = ""
    settings: dict[str, Any] = Field(default_factory=dict, description="replaces fields of the study's settings")
    claims: dict[str, dict[str, Any]] = Field(default_factory=dict, description="replaces grid fields per claim")
    skip: tuple[str, ...] = Field((), description="claims this profile does not run")


class StudySpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
    paper: str = ""
    settings: Settings = Field(default_factory=Settings)
    claims: dict[str, Claim]
    profiles: dict[str, Profile] = Field(default_factory=dict)


class ResolvedStudy(_Strict):
    """A spec under one profile: what a run does."""

    name: str
    profile: str
    paper: str
    settings: Settings
    claims: dict[str, Claim]
    skipped: tuple[str, ...] = ()


def _first_error(exc: ValidationError, what: str) -> UserError:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return UserError(f"{what}: {where}: {message}")


def _check_claim_ids(ids, where: str) -> None:
    unknown = [claim for claim in ids if claim not in CLAIM_IDS]
    if unknown:
        raise UserError(f"{where}: unknown claim {unknown[0]!r}; known claims: {', '.join(CLAIM_IDS)}")


def _check_grid(claim_id: str, grid: Grid, what: str) -> None:
    """Tasks, methods, sparsities and NSA tasks exist (one line naming the first that does not)."""
    from backend.evaluation.registry import CATEGORIES, parse_task_names
    from backend.nsa.tasks import get_task as get_nsa_task
    from backend.pruning.registry import methods as registered_methods
    from backend.pruning.spec import SparsitySpec

    where = f"{what}: claims.{claim_id}.grid"
    try:
        if grid.tasks:
            parse_task_names(list(grid.tasks))
        for sparsity in grid.sparsities:
            SparsitySpec.parse(sparsity)
        for request in grid.nsa:
            get_nsa_task(request.task)
            if request.category not in CATEGORIES:
                raise UserError(f"unknown category {request.category!r}; known: {', '.join(CATEGORIES)}")
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    bad = [method for method in grid.methods if method not in registered_methods()]
    if bad:
        raise UserError(f"{where}: unknown method {bad[0]!r}; choose from {', '.join(registered_methods())}")
    if any(seqlen < 1 for seqlen in grid.seqlens):
        raise UserError(f"{where}.seqlens: each must be a positive integer")


def parse_study(data: Any, what: str = "study spec") -> StudySpec:
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected a mapping with name, settings, claims, profiles")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, what) from None
    _check_claim_ids(spec.claims, f"{what}: claims")
    for name, profile in spec.profiles.items():
        _check_claim_ids(list(profile.claims) + list(profile.skip), f"{what}: profiles.{name}")
        resolve(spec, name, what)  # a profile that cannot be applied fails at load time
    for claim_id, claim in spec.claims.items():
        _check_grid(claim_id, claim.grid, what)
    return spec


def resolve(spec: StudySpec, profile: str | None, what: str = "study spec") -> ResolvedStudy:
    """The spec with ``profile`` applied (None: the spec as written)."""
    if profile is None:
        return ResolvedStudy(name=spec.name, profile="default", paper=spec.paper, settings=spec.settings,
                             claims=spec.claims)
    if profile not in spec.profiles:
        known = ", ".join(spec.profiles) or "none"
        raise UserError(f"{what}: no profile {profile!r}; profiles: {known}")
    chosen = spec.profiles[profile]
    try:
        settings = Settings.model_validate({**spec.settings.model_dump(), **chosen.settings})
        claims = {}
        for claim_id, claim in spec.claims.items():
            if claim_id in chosen.skip:
                continue
            grid = {**claim.grid.model_dump(), **chosen.claims.get(claim_id, {})}
            claims[claim_id] = Claim.model_validate({**claim.model_dump(), "grid": grid})
    except ValidationError as exc:
        raise _first_error(exc, f"{what}: profiles.{profile}") from None
    for claim_id in chosen.claims:
        if claim_id not in spec.claims:
            raise UserError(f"{what}: profiles.{profile}: claim {claim_id} is not in the study's claims")
    for claim_id, claim in claims.items():
        _check_grid(claim_id, claim.grid, f"{what}: profiles.{profile}")
    return ResolvedStudy(name=spec.name, profile=profile, paper=spec.paper, settings=settings, claims=claims,
                         skipped=tuple(chosen.skip))


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a spec file (UserError: missing, unreadable, not YAML, invalid)."""
    import yaml

    location = Path(path).expanduser()
    if not location.is_file():
        raise UserError(f"study spec not found: {location}")
    try:
        data = yaml.safe_load(location.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{location}:{where} malformed YAML ({problem})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{location}: cannot read ({exc})") from exc
    return parse_study(data, what=location.name)
