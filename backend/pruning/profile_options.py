"""Options every weight-pruning method takes besides its own: the layerwise sparsity profile (OWL)
and the mask refinement (DSnoT), declared once here and joined to each weight method's options.

``backend.pruning.registry`` joins ``WeightProfileOptions`` to the options model of every method
that prunes weights (not the structured or depth methods), so the CLI flags, ``PruneRequest.options``,
``GET /methods``, the dashboard's widgets and the variant id all get these fields from this one
declaration. The math is in ``backend.pruning.owl`` and ``backend.pruning.dsnot``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The fields below, by name: a structured or depth method given one of them is refused by name.
PROFILE_FIELDS = ("sparsity_profile", "owl_m", "owl_lambda", "refine", "dsnot_iterations", "dsnot_threshold")


class WeightProfileOptions(BaseModel):
    """OWL (Yin et al. 2023) and DSnoT (Zhang et al. 2024) for the unstructured and N:M methods."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sparsity_profile: Literal["uniform", "owl"] = Field(
        default="uniform", description="uniform: every decoder layer at the target sparsity; owl: per-layer "
                                       "sparsity from the layer's outlier ratio (Yin et al. 2023), mean exactly "
                                       "the target (unstructured only)")
    owl_m: float = Field(default=5.0, gt=1.0, le=1000.0,
                         description="owl: an entry of |W|·‖X‖ is an outlier above M times its layer's mean")
    owl_lambda: float = Field(default=0.08, gt=0.0, lt=0.25,
                              description="owl: the per-layer sparsities span 2·lambda around the target")
    refine: Literal["none", "dsnot"] = Field(
        default="none", description="dsnot: prune-and-grow swaps per output row that lower the expected "
                                    "reconstruction error (Zhang et al. 2024); counts and N:M pattern kept")
    dsnot_iterations: int = Field(default=50, ge=1, le=100000,
                                  description="dsnot: most swaps per output row")
    dsnot_threshold: float = Field(default=0.1, ge=0.0, le=1e6,
                                   description="dsnot: a row stops once |mean reconstruction error| is below this")
