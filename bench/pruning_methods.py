"""Speed of the pruning methods on one layer's matrices, as pure functions (no model, no engine).

CPU section (always): the embedded SmolLM2-135M shapes (q/o 576x576, k/v 192x576, gate/up
1536x576, down 576x1536), 4096 calibration tokens. Printed: seconds per call of each method and
the SparseGPT / Wanda ratio of layer-output error (below 1 means SparseGPT reconstructs better).
GPU section (only where CUDA is present): LLaMA-2-7B shapes (4096x4096, 11008x4096, 4096x11008)
in bfloat16, and MI neuron selection over 11008 neurons.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.pruning.methods.magnitude import magnitude_mask
from backend.pruning.methods.mi_neurons import mi_neurons_to_remove
from backend.pruning.methods.ria import ria_mask
from backend.pruning.methods.sparsegpt import sparsegpt_prune
from backend.pruning.methods.wanda import wanda_mask
from backend.pruning.spec import SparsitySpec
from backend.pruning.stats import InputStatistics

SMOLLM_SHAPES = {
    "q_proj": (576, 576),
    "k_proj": (192, 576),
    "gate_proj": (1536, 576),
    "down_proj": (576, 1536),
}
LLAMA7B_SHAPES = {"q_proj": (4096, 4096), "gate_proj": (11008, 4096), "down_proj": (4096, 11008)}


def synthetic_layer(rows: int, columns: int, tokens: int, device, dtype):
    """Weight [rows, columns] and inputs [tokens, columns], most variance in a few directions."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    weight = torch.randn(rows, columns, generator=generator) / columns**0.5
    inputs = torch.randn(tokens, 16, generator=generator) @ torch.randn(
        16, columns, generator=generator
    )
    inputs += 0.3 * torch.randn(tokens, columns, generator=generator)
    return weight.to(device, dtype), inputs.to(device)


def timed(device: torch.device, function, *args, **kwargs) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = function(*args, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def bench_shapes(shapes: dict, tokens: int, device: torch.device, dtype: torch.dtype) -> None:
    print(
        f"{'matrix':<10} {'shape':>12} {'spec':>5} {'magnitude':>9} {'wanda':>7} {'ria':>7} {'ria+perm':>9} "
        f"{'sparsegpt':>9} {'err sgpt/wanda':>15}"
    )
    for name, (rows, columns) in shapes.items():
        weight, inputs = synthetic_layer(rows, columns, tokens, device, dtype)
        stats = InputStatistics(columns, device, hessian=True)
        for chunk in inputs.split(2048):
            stats.update(chunk)
        dense = inputs @ weight.float().T
        for spec in (SparsitySpec.unstructured(0.5), SparsitySpec.nm(2, 4)):
            t_magnitude, _ = timed(device, magnitude_mask, weight, spec)
            t_wanda, wanda = timed(device, wanda_mask, weight, stats.act_norm, spec)
            t_ria, _ = timed(device, ria_mask, weight, stats.act_norm, spec)
            t_perm = "-"
            if spec.kind == "nm":
                seconds, _ = timed(
                    device, ria_mask, weight, stats.act_norm, spec, channel_permutation=True
                )
                t_perm = f"{seconds:.3f}"
            t_sparsegpt, result = timed(device, sparsegpt_prune, weight, stats.hessian, spec)
            error_sparsegpt = torch.linalg.norm(dense - inputs @ result.weight.float().T)
            error_wanda = torch.linalg.norm(
                dense - inputs @ weight.float().masked_fill(wanda, 0.0).T
            )
            print(
                f"{name:<10} {rows:>5}x{columns:<6} {spec.label:>5} {t_magnitude:>9.3f} {t_wanda:>7.3f} "
                f"{t_ria:>7.3f} {t_perm:>9} {t_sparsegpt:>9.3f} {float(error_sparsegpt / error_wanda):>15.2f}"
            )


def bench_mi(neurons: int, tokens: int, device: torch.device) -> None:
    generator = torch.Generator(device="cpu").manual_seed(1)
    activations = torch.randn(tokens, 64, generator=generator) @ torch.randn(
        64, neurons, generator=generator
    )
    stats = InputStatistics(neurons, device, covariance=True)
    for chunk in activations.to(device).split(4096):
        stats.update(chunk)
    seconds, removed = timed(device, mi_neurons_to_remove, stats.covariance, stats.mean, 0.2)
    print(f"MI neurons: {removed.numel()} of {neurons} chosen in {seconds:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    cpu = torch.device("cpu")
    print(f"CPU ({torch.get_num_threads()} threads), float32, {args.tokens} tokens")
    bench_shapes(SMOLLM_SHAPES, args.tokens, cpu, torch.float32)
    bench_mi(1536, args.tokens, cpu)
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        print(f"\nGPU {torch.cuda.get_device_name()}, bfloat16 weights, 16384 tokens")
        bench_shapes(LLAMA7B_SHAPES, 16384, gpu, torch.bfloat16)
        bench_mi(11008, 16384, gpu)


if __name__ == "__main__":
    main()
