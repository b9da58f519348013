"""Per-layer diagnostic of structured MLP-neuron pruning: which layers does a method break, and why.

For every decoder layer of the embedded SmolLM2-135M and every method, the relative error of the
layer's MLP output on HELD-OUT tokens, ‖ΔY‖²/‖Y‖² = Tr(ΔW G ΔWᵀ) / Tr(W G Wᵀ), with G = Σ_t h hᵀ
the held-out neuron Gram of the dense model and ΔW the change of the down projection (removed
columns zeroed, fold-in applied). Each layer is pruned in isolation from the dense calibration
statistics (as bench/structured.py's one-shot mode), so the error is the layer's own.

Then, for one layer (``--layer``), the attention sink: the share of each neuron's squared activation
that the FIRST token of the held-out windows carries, for the neurons with the largest output
energy E[h²]·‖W_j‖², and whether each method removed them. Run: python bench/structured_layers.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cache import isolated_cache  # bench/ is the script's folder, first on sys.path

# (label, method, options)
CONFIGS = [
    ("random", "random-neurons", {}),
    ("flap", "flap", {}),
    ("structured-obs", "structured-obs", {}),
    ("mi more-redundant", "mi", {"victim": "more-redundant"}),
    ("mi less-output", "mi", {}),
    ("mi weigh-output", "mi", {"weigh_output": True}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--layer", type=int, default=11, help="the layer whose sink neurons are listed")
    parser.add_argument("--top", type=int, default=8, help="neurons of largest output energy listed")
    parser.add_argument("--calibration", default="lambada")
    parser.add_argument("--heldout", default="lambada")
    args = parser.parse_args()

    isolated_cache("prunelens-bench-layers-")

    import torch
    from structured import OneShot

    from backend.config import get_settings
    from backend.data.windows import heldout_windows
    from backend.models.loader import load_model
    from backend.pruning import neuron_math
    from backend.pruning.config import PruneConfig
    from backend.pruning.methods.mi_neurons import output_energy
    from backend.pruning.registry import LayerToPrune
    from backend.pruning.spec import SparsitySpec
    from backend.pruning.stats import InputStatistics

    get_settings.cache_clear()
    loaded = load_model("smollm2-135m-instruct")
    adapter = loaded.adapter
    one_shot = OneShot(loaded, args)
    layers = one_shot.layers

    # Held-out neuron statistics of the dense model, and the first token's share of Σ h².
    windows = heldout_windows(loaded.tokenizer, args.heldout, args.seqlen, max_windows=args.eval_windows)
    held = [InputStatistics(layer.get_submodule(adapter.mlp_output).weight.shape[1], "cpu", covariance=True)
            for layer in layers]
    first_squares = [torch.zeros(stats.in_features, dtype=torch.float64) for stats in held]  # [n] per layer

    def hook(index):
        def accumulate(_module, inputs):
            h = inputs[0].detach()  # [windows, seq, n]
            held[index].update(h)
            first_squares[index] += h[:, 0].double().pow(2).sum(dim=0)
        return accumulate

    handles = [layer.get_submodule(adapter.mlp_output).register_forward_pre_hook(hook(i))
               for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for chunk in windows.split(4):
                loaded.model(input_ids=chunk, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    grams = [neuron_math.neuron_gram(s.covariance, s.mean, s.tokens) for s in held]  # [n, n] float64

    calibration = one_shot.stats(0)
    errors: dict[str, list[float]] = {}
    removed_at_layer: dict[str, set[int]] = {}
    for label, method_name, options in CONFIGS:
        config = PruneConfig(method=method_name, calibration=args.calibration,
                             spec=SparsitySpec.neurons(args.ratio), nsamples=args.nsamples,
                             seqlen=args.seqlen, seed=0, **options)
        method, chosen = config.info, config.method_options
        row = []
        for index, layer in enumerate(layers):
            linears = adapter.prunable_linears(layer)
            view = LayerToPrune(index, linears, {adapter.mlp_output: calibration[index]}, adapter)
            weight = view.weight(adapter.mlp_output).detach().double()  # [out, n]
            new = weight.clone()
            for change in method.prune(view, chosen, config.spec):
                if change.linear == adapter.mlp_output and change.param == "weight":
                    if change.new_value is not None:
                        new = change.new_value.detach().double()
                    new = new.masked_fill(change.mask, 0.0)
                    if index == args.layer:
                        removed_at_layer[label] = set(torch.nonzero(change.mask.all(dim=0)).squeeze(1).tolist())
            delta = new - weight
            gram = grams[index]
            row.append(float(torch.trace(delta @ gram @ delta.T) / torch.trace(weight @ gram @ weight.T)))
        errors[label] = row
        print(f"{label:<20} mean rel. error {sum(row) / len(row):8.4f}  max {max(row):8.4f} "
              f"(layer {row.index(max(row))})", flush=True)

    labels = list(errors)
    print(f"\nrelative MLP-output error ‖ΔY‖²/‖Y‖² per layer, {args.ratio:.0%} of neurons removed, "
          f"{held[0].tokens} held-out tokens")
    print("| layer | " + " | ".join(labels) + " |")
    print("|---:|" + "---:|" * len(labels))
    for index in range(len(layers)):
        print(f"| {index} | " + " | ".join(f"{errors[label][index]:.4f}" for label in labels) + " |")

    layer = args.layer
    stats = held[layer]
    down = layers[layer].get_submodule(adapter.mlp_output).weight.detach()
    energy = output_energy(stats.covariance, stats.mean, down)  # [n], held-out
    total_squares = (stats.covariance.double().diagonal() + stats.mean.double().pow(2)) * stats.tokens
    share = first_squares[layer] / total_squares.clamp_min(1e-30)
    print(f"\nlayer {layer}: the {args.top} neurons of largest held-out output energy E[h²]·‖W_j‖² "
          f"(share of the layer's total), the first token's share of Σ h², removed by:")
    print("| neuron | energy share | first-token share of Σh² | " + " | ".join(labels) + " |")
    print("|---:|---:|---:|" + "---|" * len(labels))
    for neuron in torch.topk(energy, args.top).indices.tolist():
        marks = ["removed" if neuron in removed_at_layer.get(label, set()) else "" for label in labels]
        print(f"| {neuron} | {float(energy[neuron] / energy.sum()):.3f} | {float(share[neuron]):.4f} | "
              + " | ".join(marks) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
