"""NSA's options, declared once: the service, the CLI flags, the HTTP bodies and the dashboard read them.

``NsaOptions`` holds every choice of an NSA run that is not its input (texts, words, variants,
model): defaults, bounds and the help text live in its fields. ``backend.nsa.service.attribute``
takes it (or its fields as keywords), ``prunelens attribute`` generates one flag per field
(``backend.commands.add_model_arguments``), the API's ``NsaRequest`` and the upload's form
fields inherit it, and ``GET /nsa/options`` serves its JSON schema to the dashboard.

Imports nothing heavy (no torch): the API's schemas import it at start.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from backend.commands import validated_options

ActivationMode = Literal["abs", "positive"]
DEFAULT_NULL_DRAWS = 200
DEFAULT_RESAMPLES = 1000
MAX_TOP_K = 500

# The options every stored request names even at their default (the canonical form of a request,
# hashed into its result id, was these before the other options existed).
ALWAYS_IN_REQUEST = ("task", "top_k", "ablate")


class NsaOptions(BaseModel):
    """How NSA runs: task prompt, how many neurons, which checks and statistics."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(default="sentiment", min_length=1, max_length=64,
                      description="NSA task type: sentiment, question_answering, semantic_similarity or "
                                  "logical_reasoning (GET /nsa/tasks).")
    top_k: int = Field(default=20, ge=1, le=MAX_TOP_K, description="Neurons selected by score.")
    ablate: bool = Field(default=False, description="Also zero the top neurons in the dense model and "
                                                    "compare the label margin change with random neurons.")
    patch: bool = Field(default=False, description="Cross-fitted patching: restore the neurons' dense "
                                                   "activations in each variant (needs variants and a "
                                                   "gold label per text).")
    split: bool = Field(default=True, description="Cross-fitted held-out figures (with >= 4 texts); "
                                                  "false: in-sample only.")
    activation: ActivationMode = Field(default="abs", description="A = |a| (abs) or max(a, 0) (positive).")
    max_new_tokens: int = Field(default=48, ge=1, le=512, description="Step-1 generation length.")
    null_draws: int = Field(default=DEFAULT_NULL_DRAWS, ge=0, le=5000,
                            description="Matched-null neuron sets and specificity permutations (0: off).")
    resamples: int = Field(default=DEFAULT_RESAMPLES, ge=0, le=20000,
                           description="Bootstrap resamples for the 95% intervals (0: off).")
    seed: int = Field(default=0, ge=0, le=2**31 - 1,
                      description="Example draw, fold split and random-neuron seed.")

    def request_fields(self) -> dict:
        """The options as a stored request names them: the first ones always, the rest when not default."""
        values = self.model_dump()
        changed = self.model_dump(exclude_defaults=True)
        return {name: values[name] for name in type(self).model_fields
                if name in ALWAYS_IN_REQUEST or name in changed}


def nsa_options(base: NsaOptions | None = None, **changes) -> NsaOptions:
    """``base`` (default: all defaults) with ``changes`` applied and checked: UserError naming the flag."""
    return validated_options(NsaOptions, {**(base.model_dump() if base is not None else {}), **changes})


def options_of(model: BaseModel) -> NsaOptions:
    """The NsaOptions part of a model that inherits them (an HTTP body, the upload's form)."""
    return NsaOptions.model_validate({name: getattr(model, name) for name in NsaOptions.model_fields})
