"""magnitude-neurons: remove the MLP neurons whose weights (down column, gate/up rows) are smallest."""

from __future__ import annotations

from backend.pruning.registry import NoOptions
from backend.pruning.structured import MlpLayer, NeuronPruning, lowest, neuron_method


def select_smallest_weights(layer: MlpLayer, _options: NoOptions, count: int) -> NeuronPruning:
    """The neurons of least ‖W_down[:, j]‖² + Σ ‖W_in[j, :]‖² over the input projections; no data."""
    energy = layer.down_weight.float().pow(2).sum(dim=0).cpu()  # [n]
    for weight in layer.input_weights:  # [n, in]
        energy += weight.float().pow(2).sum(dim=1).cpu()
    return NeuronPruning(lowest(energy, count))


METHOD = neuron_method("magnitude-neurons",
                       "remove MLP neurons of smallest weight norm, no data (structured baseline)",
                       select_smallest_weights, NoOptions, data=False)
