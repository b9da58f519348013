"""magnitude-neurons: remove the MLP neurons whose weights (down column, gate/up rows) are smallest."""

from __future__ import annotations

from backend.pruning.registry import NoOptions
from backend.pruning.structured import neuron_method

METHOD = neuron_method("magnitude-neurons",
                       "remove MLP neurons of smallest weight norm, no data (structured baseline)",
                       NoOptions, data=False)
