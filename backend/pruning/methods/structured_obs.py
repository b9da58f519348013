"""structured-obs: greedy structured OBS on MLP neurons with H⁻¹ downdates (ZipLM / SlimGPT).

Removes the neuron of least ‖W_j‖² / (H⁻¹)_jj, updates the down projection (the fold-in) and H⁻¹,
and repeats; ``block`` neurons per update (see neuron_math.greedy_neuron_removal).
"""

from __future__ import annotations

from pydantic import Field

from backend.pruning import neuron_math
from backend.pruning.structured import CompensationOptions, MlpLayer, NeuronPruning, neuron_method


class StructuredObsOptions(CompensationOptions):
    block: int | None = Field(default=None, ge=1, le=65536,
                              description="neurons removed per H⁻¹ update (default n/128; 1 = exact greedy)")


def select_obs(layer: MlpLayer, options: StructuredObsOptions, count: int) -> NeuronPruning:
    """Greedy OBS on the uncentred neuron Gram; the greedy already folds every removal in."""
    covariance, mean = layer.calibrated()
    gram = neuron_math.neuron_gram(covariance, mean, layer.tokens)  # [n, n]
    removed, folded = neuron_math.greedy_neuron_removal(
        layer.down_weight, gram, count, damp=options.damp,
        block=neuron_math.removals_per_update(options.block, layer.neurons))
    return NeuronPruning(removed, folded if options.compensate else None)


METHOD = neuron_method("structured-obs", "greedy structured OBS on MLP neurons with fold-in "
                       "(ZipLM/SlimGPT; structured)", select_obs, StructuredObsOptions)
