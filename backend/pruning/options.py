"""The options of a prune request, declared once: the CLI flags, the HTTP body and the protect experiment read them.

``PruneOptions`` = which model and method (with the method's own options, validated by the
registry), the calibration windows (``CalibrationOptions``), the sparsity (``SparsityOptions``:
``sparsity``, ``pattern`` or ``neuron_ratio``; a depth method's amount is its option ``drop_blocks``)
and the protected neurons (``ProtectOptions``).
``prunelens prune`` generates its flags from these fields (``backend.commands.add_model_arguments``),
``POST /variants`` takes ``PruneRequest`` (this model), ``prunelens experiment protect`` generates
its calibration and protection flags from the same fields; ``backend.pruning.service`` runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.errors import UserError
from backend.pruning.protection import DEFAULT_UPWEIGHT_FACTOR
from backend.pruning.spec import SparsitySpec

if TYPE_CHECKING:
    from backend.pruning.registry import PruningMethod

DEFAULT_SPARSITY = "0.5"  # weight methods, when no sparsity, pattern or neuron ratio is given
DEFAULT_RATIO = 0.01  # protected fraction of all MLP neurons with protect_task
PROTECT_TEXTS = 32
ProtectTask = Literal["sst2", "rte"]
# Dataset -> the NSA task type whose step-1 prompt asks for its influential words.
PROTECT_TASKS: dict[str, str] = {"sst2": "sentiment", "rte": "logical_reasoning"}


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CalibrationOptions(_Options):
    calibration: str = Field(
        default="c4", min_length=1, max_length=4096,  # file:PATH on the command line
        description="Calibration set: c4, wikitext2, ptb, arc_challenge, arc_easy, boolq, rte, sst2, wnli, "
                    "lambada, imdb (GET /calibration-sets, `prunelens datasets` say which work offline), or "
                    "file:PATH on the command line (not over HTTP).")
    nsamples: int = Field(default=128, ge=1, le=4096, description="Calibration windows.")
    seqlen: int = Field(default=2048, ge=2, le=32768, description="Tokens per window (capped at the model's context).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1, description="Seed of the window draw.")


class SparsityOptions(_Options):
    sparsity: str | None = Field(
        default=None, min_length=1, max_length=32,
        description=f"'0.5' (unstructured: fraction of weights removed; the default {DEFAULT_SPARSITY} for "
                    "weight methods), '2:4' (N:M, N kept of every M) or 'neurons:0.2' (structured methods).")
    pattern: str | None = Field(
        default=None, min_length=3, max_length=16,
        description="N:M semi-structured, e.g. 2:4 = keep 2 of every 4 consecutive weights.")
    neuron_ratio: float | None = Field(
        default=None, gt=0, lt=1, description="Structured methods: fraction of MLP neurons removed.")

    def sparsity_spec(self, method: PruningMethod[Any]) -> SparsitySpec:
        """The one sparsity of the request for ``method`` (UserError when more than one is given, none
        for a structured method, or any for a depth method: its amount is its option drop_blocks)."""
        given = [name for name in ("sparsity", "pattern", "neuron_ratio") if getattr(self, name) is not None]
        if len(given) > 1:
            raise UserError("give one of --sparsity, --pattern, --neuron-ratio")
        if method.depth:
            if given:
                raise UserError(f"method {method.name!r} removes whole decoder blocks: give --drop-blocks K "
                                f"(options.drop_blocks), not --{given[0].replace('_', '-')}")
            return SparsitySpec.parse(DEFAULT_SPARSITY)  # not used by depth methods, nor part of their id
        if self.pattern is not None:
            return SparsitySpec.parse(self.pattern)
        if self.neuron_ratio is not None:
            return SparsitySpec.parse(f"neurons:{self.neuron_ratio}")
        if self.sparsity is None and method.structured:
            raise UserError(f"method {method.name!r} needs --neuron-ratio")
        return SparsitySpec.parse(self.sparsity or DEFAULT_SPARSITY)


class ProtectOptions(_Options):
    protect: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[0-9a-f]{20}(:[0-9]{1,6})?$",
        description="Protect the neurons of a stored NSA result: 'RESULT_ID' or 'RESULT_ID:TOP_K' (its first "
                    "TOP_K by score). See docs/guided-pruning.md.")
    protect_task: ProtectTask | None = Field(
        default=None, description="Protect the neurons NSA selects on this task's examples (outside the "
                                  "default evaluation sample).")
    protect_ratio: float | None = Field(
        default=None, gt=0, le=0.5,
        description=f"With protect_task: the fraction of all MLP neurons protected; {DEFAULT_RATIO} when not given.")
    protect_mode: Literal["keep", "upweight"] = Field(
        default="keep", description="keep: protected weights are never pruned, the quota moves to other weights; "
                                    "upweight: their saliency is multiplied by protect_factor.")
    protect_factor: float = Field(default=DEFAULT_UPWEIGHT_FACTOR, ge=1, le=1e6, description="Upweight factor.")
    protect_texts: int = Field(default=PROTECT_TEXTS, ge=1, le=512,
                               description="With protect_task: how many examples NSA selects on.")

    @property
    def protects(self) -> bool:
        return self.protect is not None or self.protect_task is not None


class PruneOptions(ProtectOptions, SparsityOptions, CalibrationOptions):
    """A whole prune request (HTTP body ``PruneRequest``; the CLI's flags)."""

    model: str | None = Field(
        default=None, max_length=300,
        description="Base model (a name from GET /models, a hub id or, on the command line, a local directory); "
                    "default: the server's.")
    method: str = Field(
        min_length=1, max_length=64,
        description="A registered pruning method (GET /methods lists them with their options).")
    options: dict[str, bool | int | float | str] = Field(
        default_factory=dict, max_length=32,
        description="The method's options by name, e.g. {\"alpha\": 0.5} for ria; names, defaults and bounds come "
                    "from the method's options schema in GET /methods (omitted = default).")

    # Checked against the registry as it is at request time (methods may be registered later).
    @field_validator("method")
    @classmethod
    def _registered_method(cls, value: str) -> str:
        from backend.pruning.registry import methods

        if value not in methods():
            raise ValueError(f"unknown method {value!r}; GET /methods lists the registered ones")
        return value

    @model_validator(mode="after")
    def _options_of_the_method(self) -> PruneOptions:
        from backend.pruning.registry import get_method

        try:
            get_method(self.method).parse_options(self.options)  # the one validation path of options
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return self

