"""flap: remove MLP neurons of least fluctuation Var(h_j)·‖W_down[:, j]‖² (An et al., AAAI 2024).

Compensation: the removed neurons' mean output W_R μ_R goes into the down projection's bias where
it has one (OPT, GPT-2); LLaMA's down_proj has no bias, so there FLAP is its score alone.
"""

from __future__ import annotations

from pydantic import Field

from backend.pruning.structured import NeuronDataOptions, neuron_method


class FlapOptions(NeuronDataOptions):
    compensate: bool = Field(default=True,
                             description="add the removed neurons' mean output to the down bias")


METHOD = neuron_method("flap", "remove MLP neurons of least Var(h_j)·‖W_j‖², mean into the bias "
                       "(An et al. 2024; structured)", FlapOptions)
