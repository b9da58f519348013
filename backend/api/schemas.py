"""Request and response models of the HTTP API; their descriptions are the reference at /docs."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import UploadFile
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from backend.nsa.options import NsaOptions
from backend.pruning.options import PruneOptions

# Ids as they appear in URLs. Variant ids follow backend.pruning.variants.validate_variant_id.
VARIANT_ID_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,127}$"
JOB_ID_PATTERN = r"^[0-9a-f]{32}$"
NSA_ID_PATTERN = r"^[0-9a-f]{20}$"
MAX_NSA_TEXTS = 64  # POST /nsa, answered while the client waits
MAX_JOB_TEXTS = 1000  # POST /nsa/jobs
MAX_TEXT_CHARS = 100_000
MAX_WORDS = 200
MAX_VARIANTS = 8

JobStateName = Literal["queued", "running", "succeeded", "failed", "interrupted", "cancelled"]


class Strict(BaseModel):
    """Unknown fields are an error: a typo in a parameter must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, in one line, fit to show to a user.")
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="For invalid requests: each field that failed validation and why."
    )


# ----------------------------------------------------------------------------- health and catalogues


class ComputeState(BaseModel):
    busy: bool = Field(description="Whether a job or heavy request is using the model now.")
    holder: str | None = Field(description="What holds the compute lock, if anything.")
    waiting: int = Field(description="Heavy requests waiting for the compute lock.")


class Health(BaseModel):
    status: Literal["ok", "no_model"] = Field(
        description="'ok' when the default model is loaded; 'no_model' when it could not be (see `error`)."
    )
    version: str = Field(description="PruneLens backend version.")
    default_model: str = Field(description="The model used when a request names none.")
    loaded_models: list[str] = Field(description="Models held in memory now.")
    device: str | None = Field(description="Where the default model runs (cpu, cuda:0, ...).")
    error: str | None = Field(
        default=None, description="Why the default model is not loaded, if it is not."
    )
    compute: ComputeState
    jobs: dict[str, int] = Field(description="Number of jobs per state.")
    auth: bool = Field(description="Whether requests need a Bearer token.")


class ModelInfo(BaseModel):
    name: str = Field(description="The reference to pass as `model` in other requests.")
    source: str = Field(description="'embedded', 'local' or 'hub'.")
    converted: bool = Field(
        description="Whether its weights are ready on disk (no conversion at first use)."
    )
    default: bool = Field(description="Whether it is the server's default model.")
    loaded: bool = Field(description="Whether it is in memory now.")


class CalibrationSet(BaseModel):
    name: str = Field(description="Name to pass as `calibration` when pruning.")
    description: str = Field(description="What the text is and where it comes from.")
    offline: bool = Field(
        description="Whether it works without network access (data shipped in wheels)."
    )
    splits: list[str] = Field(description="Text splits: 'calibration' and/or 'heldout'.")
    labelled_splits: list[str] = Field(
        description="Splits with labelled examples (for NSA samples)."
    )
    available: bool = Field(
        default=True,
        description="Usable now: offline, or the model hub answered (checked at most once a minute).",
    )


class EvalTaskInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(description="Name to pass in `tasks` of POST /evaluations.")
    title: str = Field(description="Display name.")
    category: str = Field(description="Task category key.")
    category_title: str = Field(description="Task category, for display.")
    offline: bool = Field(description="Whether its data ships with the install.")
    source: str = Field(description="Where the examples come from.")
    definition: str = Field(description="The lm-eval or PruneLens task definition used.")
    notes: str | None = Field(default=None, description="Caveats.")


class AttributionTaskInfo(BaseModel):
    name: str = Field(description="Name to pass as `task` of POST /nsa.")
    label_words: list[str] = Field(
        description="The two continuations whose log-prob margin the probe compares."
    )
    probe: str = Field(
        description="The completion prompt around {text} used by the fallback and ablation."
    )


# ----------------------------------------------------------------------------- variants


class PruneRequest(PruneOptions):
    """POST /variants: the fields of ``backend.pruning.options.PruneOptions`` (shared with the CLI)."""

    def protection_request(self):
        """The protection fields as a ``ProtectionRequest`` (UserError on a bad combination)."""
        from backend.guided.protection_sources import ProtectionRequest

        return ProtectionRequest.of(self, self.seed)


class MethodInfo(BaseModel):
    name: str = Field(description="Method name, as in PruneRequest.method.")
    description: str = Field(description="What it scores and where it comes from.")
    structured: bool = Field(description="Removes whole MLP neurons (sparsity 'neurons:R').")
    depth: bool = Field(default=False, description="Removes whole decoder blocks (option drop_blocks; "
                                                   "sparsity is ignored).")
    needs_calibration: bool = Field(description="Whether it uses calibration data.")
    protects: bool = Field(default=False, description="Honours protected neurons (protect, protect_task).")
    options: dict[str, Any] = Field(description="JSON schema of its options (defaults, bounds, help).")


class VariantSummary(BaseModel):
    id: str = Field(description="Variant id (use in /variants/{id}, NSA and evaluations).")
    base_model: str = Field(description="The dense model it was pruned from.")
    method: str | None = Field(default=None, description="Pruning method.")
    calibration: str | None = Field(
        default=None, description="Calibration set ('none' for magnitude)."
    )
    sparsity: str | None = Field(
        default=None, description="Sparsity label: '0.5', '2:4', 'neurons:0.2'."
    )
    achieved_sparsity: float | None = Field(
        default=None, description="Fraction of prunable weights set to zero."
    )
    nsamples: int | None = Field(default=None, description="Calibration windows used.")
    seqlen: int | None = Field(default=None, description="Tokens per calibration window.")
    seed: int | None = Field(default=None, description="Seed of the calibration draw.")
    created_at: str | None = Field(default=None, description="When it was written (UTC, ISO 8601).")
    stale: bool = Field(
        default=False,
        description="Written by other code than the server runs: kept, but a new prune recomputes it.",
    )


class DeletedVariant(BaseModel):
    deleted: str = Field(description="Id of the variant removed.")


# ----------------------------------------------------------------------------- jobs


class JobInfo(BaseModel):
    id: str = Field(description="Job id.")
    kind: str = Field(description="'prune' or 'evaluate'.")
    state: JobStateName = Field(
        description="queued → running → succeeded | failed | cancelled; interrupted after a restart."
    )
    progress: float = Field(ge=0, le=1, description="Fraction done, 0–1.")
    message: str = Field(description="What it is doing now, or how it ended.")
    params: dict[str, Any] = Field(description="The request that created it.")
    result: dict[str, Any] | None = Field(description="What it produced (succeeded jobs).")
    error: str | None = Field(
        description="Why it failed, was interrupted or was cancelled, in one line."
    )
    created_at: str = Field(description="UTC, ISO 8601.")
    started_at: str | None = Field(description="UTC, ISO 8601.")
    finished_at: str | None = Field(description="UTC, ISO 8601.")


class JobAccepted(BaseModel):
    job: JobInfo = Field(description="The job as created (state 'queued').")
    job_url: str = Field(description="Where to poll its state.")
    events_url: str = Field(description="Server-sent events stream of its progress.")
    variant_id: str | None = Field(
        default=None, description="Prune jobs: the id the variant will have."
    )


# ----------------------------------------------------------------------------- NSA


class NsaRequest(NsaOptions):
    """The one NSA request: POST /nsa answers it while the client waits (at most MAX_NSA_TEXTS
    texts), POST /nsa/jobs runs it as a job; the options are ``backend.nsa.options.NsaOptions``."""

    model: str | None = Field(
        default=None, max_length=300, description="Dense model (a name from GET /models); default: the server's."
    )
    text: str | None = Field(
        default=None, max_length=MAX_TEXT_CHARS, description="One text (or give `texts` or `dataset`)."
    )
    texts: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_JOB_TEXTS,
        description=f"Several texts, scores aggregated over them (POST /nsa: at most {MAX_NSA_TEXTS}; "
        f"a job: at most {MAX_JOB_TEXTS}).",
    )
    labels: list[str] | None = Field(
        default=None, max_length=MAX_JOB_TEXTS, description="One gold label per text (e.g. positive/negative)."
    )
    dataset: str | None = Field(
        default=None, max_length=64,
        description="Labelled examples from an offline set instead of texts: sst2, imdb, rte or boolq.",
    )
    n: int = Field(default=100, ge=1, le=MAX_JOB_TEXTS, description="Examples drawn from `dataset`.")
    words: list[str] | None = Field(
        default=None,
        max_length=MAX_WORDS,
        description="Influential words chosen by the user (override step 1's generation).",
    )
    text_words: list[list[str]] | None = Field(
        default=None,
        max_length=MAX_JOB_TEXTS,
        description="Influential words per text, aligned with `texts` (instead of `words`).",
    )
    variants: list[str] = Field(
        default_factory=list,
        max_length=MAX_VARIANTS,
        description="Pruned variant ids of the same model to compare with the dense one.",
    )

    @field_validator("texts")
    @classmethod
    def _texts_not_blank(cls, texts: list[str] | None) -> list[str] | None:
        if texts is not None:
            for index, text in enumerate(texts):
                if not text.strip():
                    raise ValueError(f"text {index + 1} is empty")
                if len(text) > MAX_TEXT_CHARS:
                    raise ValueError(f"text {index + 1} is longer than {MAX_TEXT_CHARS} characters")
        return texts

    @field_validator("words")
    @classmethod
    def _words_not_blank(cls, words: list[str] | None) -> list[str] | None:
        if words is not None:
            words = [word.strip() for word in words]
            if not words or any(not word or len(word) > 200 for word in words):
                raise ValueError("words must be non-empty strings of at most 200 characters")
        return words

    @model_validator(mode="after")
    def _one_source_of_text(self) -> NsaRequest:
        if [self.text, self.texts, self.dataset].count(None) != 2:
            raise ValueError("give exactly one of `text`, `texts` or `dataset`: either texts or dataset examples")
        if self.text is not None and not self.text.strip():
            raise ValueError("text is empty")
        if self.labels is not None and (self.dataset is not None or len(self.labels) != len(self.all_texts())):
            raise ValueError("labels must give one label per text")
        if self.text_words is not None and (
            self.words is not None or self.dataset is not None or len(self.text_words) != len(self.all_texts())
        ):
            raise ValueError("`text_words` needs one list per text, and no `words`")
        return self

    def all_texts(self) -> list[str]:
        """The given texts (empty with `dataset`: its examples are drawn by the route)."""
        return [self.text] if self.text is not None else list(self.texts or [])

    def all_words(self) -> list[str] | list[list[str]] | None:
        """One list for every text (`words`) or one per text (`text_words`)."""
        return self.words if self.text_words is None else self.text_words


class NsaUpload(NsaOptions):
    """POST /nsa/upload's form: the file, the NSA options as form fields, and the other inputs."""

    # The UploadFile object, checked by FastAPI before the model sees it.
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    file: UploadFile = Field(
        description=".txt (paragraphs split on blank lines), .csv with a 'text' column, or .jsonl with a "
        "'text' field per line (and optionally 'label' and 'words')."
    )
    model: str | None = Field(default=None, max_length=300, description="Dense model; default: the server's.")
    words: str | None = Field(default=None, max_length=20000, description="Comma-separated influential words.")
    variants: str | None = Field(default=None, max_length=2000, description="Comma-separated variant ids.")


class NsaStored(BaseModel):
    id: str = Field(description="Result id: GET /nsa/{id} returns this again (share a view by id).")
    created_at: str = Field(description="When it was computed (UTC, ISO 8601).")
    code_version: str | None = Field(
        default=None, description="Hash of the NSA code that computed it (part of the id)."
    )
    stale: bool = Field(
        default=False, description="Computed by other NSA code than the server's: not current."
    )
    request: dict[str, Any] = Field(description="The normalised request that produced it.")
    result: dict[str, Any] = Field(description="The NSA result JSON (schema in docs/nsa.md).")


class NsaSummary(BaseModel):
    id: str = Field(description="Result id.")
    created_at: str = Field(description="UTC, ISO 8601.")
    model: str = Field(description="Dense model.")
    task: str = Field(description="NSA task type.")
    n_texts: int = Field(description="Number of texts.")
    preview: str = Field(description="The start of the first text.")
    variants: list[str] = Field(description="Variants compared.")
