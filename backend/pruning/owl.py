"""OWL: per-layer sparsity from each decoder layer's share of outlier weights (a sparsity profile).

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to
High Sparsity" (2023). Layers whose Wanda scores |W_ij|·‖X_j‖₂ hold many outliers are pruned less:

    D_l  = fraction of the entries of layer l's scores (all its linears together) above M · their mean
    D'_l = 2λ · (D_l − min D) / (max D − min D)                      in [0, 2λ]
    s_l  = target − (D'_l − mean_w D')                               mean_w: weighted by weight count

The paper (and its code) subtracts the plain mean over layers; we weight it by each layer's number
of prunable weights, so the sparsity over the whole model is the target even where layers differ in
size. Decoder layers of one model have the same size in every supported family, so the two agree.
The scores come from one pass of the calibration windows through the **dense** layers, before any
pruning, as in the paper's code and llm-compressor's ``sparsity_profile="owl"``. Each layer is then
pruned by the method at ``s_l`` with the method's own rounding (Wanda: ``int(in·s_l)`` per row).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from backend.errors import UserError
from backend.models.adapters import weight_matrix
from backend.pruning.layers import collect_statistics, propagate
from backend.pruning.profile_options import WeightProfileOptions
from backend.pruning.spec import SparsitySpec


def check_owl(options: WeightProfileOptions, spec: SparsitySpec) -> None:
    """UserError when OWL cannot give a valid profile for ``spec``, before any work."""
    if options.sparsity_profile != "owl":
        return
    if spec.kind != "unstructured":
        raise UserError(f"--sparsity-profile owl needs an unstructured sparsity (a ratio), not {spec.label}: "
                        "N:M fixes the count of every group")
    room = min(spec.ratio, 1.0 - spec.ratio)
    if 2 * options.owl_lambda >= room:
        raise UserError(f"--owl-lambda {options.owl_lambda:g} is too wide for sparsity {spec.label}: "
                        f"layer sparsities span up to 2·lambda around it; use a lambda below {room / 2:g}")


def outlier_ratio(scores: Sequence[torch.Tensor], m: float) -> float:
    """D_l: the fraction of all entries of ``scores`` (the layer's [out, in] |W|·‖X‖ matrices, taken
    together) that exceed ``m`` times their mean."""
    flat = torch.cat([score.reshape(-1).double() for score in scores])
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(ratios: Sequence[float], sizes: Sequence[int], target: float, lam: float) -> list[float]:
    """Per-layer sparsity from the outlier ratios D_l; its mean weighted by ``sizes`` is ``target``."""
    values = np.asarray(ratios, dtype=np.float64)
    if values.max() == values.min():  # nothing tells the layers apart
        return [float(target)] * len(values)
    spread = 2.0 * lam * (values - values.min()) / (values.max() - values.min())
    centre = float(np.average(spread, weights=np.asarray(sizes, dtype=np.float64)))
    return [float(target - (value - centre)) for value in spread]


@dataclass(frozen=True)
class OwlProfile:
    outlier_ratios: list[float]  # D_l per decoder layer
    sizes: list[int]  # prunable weights per decoder layer
    sparsities: list[float]  # s_l per decoder layer

    def specs(self) -> list[SparsitySpec]:
        return [SparsitySpec.unstructured(value) for value in self.sparsities]

    def record(self) -> dict:
        """For the manifest."""
        return {"outlier_ratios": self.outlier_ratios, "layer_sparsity": self.sparsities,
                "layer_weights": self.sizes}


@torch.no_grad()
def owl_profile(loaded, layers, hidden: list[torch.Tensor], calls: list, options: WeightProfileOptions,
                spec: SparsitySpec) -> OwlProfile:
    """The profile from one dense pass: ``hidden`` per batch [batch, tokens, hidden] entering layer 0,
    ``calls[l]`` layer l's call arguments per batch (``hidden`` itself is left as it is)."""
    adapter, device = loaded.adapter, loaded.device
    ratios, sizes = [], []
    for index, layer in enumerate(layers):
        linears = adapter.prunable_linears(layer)
        statistics = collect_statistics(layer, linears, hidden, calls[index], device, hessian=False)
        scores = [weight_matrix(module).detach().float().abs()
                  * statistics[name].act_norm.to(weight_matrix(module).device).unsqueeze(0)  # [out, in]
                  for name, module in linears.items()]
        ratios.append(outlier_ratio(scores, options.owl_m))
        sizes.append(sum(score.numel() for score in scores))
        if index + 1 < len(layers):
            hidden = propagate(layer, hidden, calls[index], device)
    return OwlProfile(ratios, sizes, owl_sparsities(ratios, sizes, spec.ratio, options.owl_lambda))
