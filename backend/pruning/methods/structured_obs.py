"""structured-obs: greedy structured OBS on MLP neurons with H⁻¹ downdates (ZipLM / SlimGPT).

Removes the neuron of least ‖W_j‖² / (H⁻¹)_jj, updates the down projection (the fold-in) and H⁻¹,
and repeats; ``block`` neurons per update (see neuron_math.greedy_neuron_removal). The greedy's
own fold-in (ridge ``damp``) only ranks the neurons; the compensation written is the shared one,
its ridge validated on held-out calibration windows (structured.validated_compensation).
"""

from __future__ import annotations

from pydantic import Field

from backend.pruning import neuron_math
from backend.pruning.structured import (
    CompensationOptions,
    MlpLayer,
    NeuronPruning,
    neuron_method,
    validated_compensation,
)


class StructuredObsOptions(CompensationOptions):
    block: int | None = Field(default=None, ge=1, le=65536,
                              description="neurons removed per H⁻¹ update (default n/128; 1 = exact greedy)")


def select_obs(layer: MlpLayer, options: StructuredObsOptions, count: int) -> NeuronPruning:
    """Greedy OBS on the uncentred neuron Gram picks the neurons; the validated fold-in compensates."""
    covariance, mean = layer.calibrated()
    gram = neuron_math.neuron_gram(covariance, mean, layer.tokens)  # [n, n]
    removed, _folded = neuron_math.greedy_neuron_removal(
        layer.down_weight, gram, count, damp=options.damp,
        block=neuron_math.removals_per_update(options.block, layer.neurons))
    if not options.compensate:
        return NeuronPruning(removed)
    return validated_compensation(layer, removed, options)


METHOD = neuron_method("structured-obs", "greedy structured OBS on MLP neurons with fold-in "
                       "(ZipLM/SlimGPT; structured)", select_obs, StructuredObsOptions)
