"""structured-obs: greedy structured OBS on MLP neurons with H⁻¹ downdates (ZipLM / SlimGPT).

Removes the neuron of least ‖W_j‖² / (H⁻¹)_jj, updates the down projection (the fold-in) and H⁻¹,
and repeats; ``block`` neurons per update (see neuron_math.greedy_neuron_removal).
"""

from __future__ import annotations

from pydantic import Field

from backend.pruning.structured import CompensationOptions, neuron_method


class StructuredObsOptions(CompensationOptions):
    block: int | None = Field(default=None, ge=1, le=65536,
                              description="neurons removed per H⁻¹ update (default n/128; 1 = exact greedy)")


METHOD = neuron_method("structured-obs", "greedy structured OBS on MLP neurons with fold-in "
                       "(ZipLM/SlimGPT; structured)", StructuredObsOptions)
