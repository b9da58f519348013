"""Pruning speed against a floor measured in the same run.

CPU section (always): the embedded model, 16 windows x 256 tokens of general text (LAMBADA).
Floor = one bare forward pass of the decoder stack over the same windows. Printed: Wanda and
SparseGPT pruning time (model loaded, windows built, variant writing excluded and shown apart)
divided by the floor (the mean of a floor measured right before and one right after it), the
median of --runs runs after one warm-up run of each (the floor is warmed up too).
Goals: Wanda <= 2.2, SparseGPT <= 3.5.

GPU section (only where CUDA is present): a LLaMA-2-7B-shaped model with random bf16 weights,
128 x 2048 calibration; end-to-end time and peak GPU memory. Goals: Wanda <= 60 s, SparseGPT <= 5 min.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.windows import calibration_windows
from backend.memory import keep_freed_memory
from backend.pruning.engine import (
    PruneConfig,
    capture_decoder_inputs,
    create_variant,
    propagate,
)
from backend.pruning.spec import SparsitySpec

GOALS_CPU = {"wanda": 2.2, "sparsegpt": 3.5}
GOALS_GPU_SECONDS = {"wanda": 60.0, "sparsegpt": 300.0}


def decoder_floor(loaded, windows: torch.Tensor, batch_size: int) -> float:
    """Seconds for one bare pass of every decoder layer over the windows (inputs pre-captured)."""
    layers = loaded.adapter.decoder_layers(loaded.model)
    batches = [chunk.to(loaded.device) for chunk in windows.split(batch_size)]
    with torch.no_grad():
        hidden, calls_per_batch = capture_decoder_inputs(loaded.model, layers, batches, loaded.device)
    calls = [list(per_layer) for per_layer in zip(*calls_per_batch, strict=True)]
    _sync(loaded.device)
    start = time.perf_counter()
    for index, layer in enumerate(layers):
        hidden = propagate(layer, hidden, calls[index], loaded.device)
    _sync(loaded.device)
    return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def prune_seconds(loaded, method: str, calibration: str, nsamples: int, seqlen: int, seed: int):
    config = PruneConfig(method=method, calibration=calibration, spec=SparsitySpec.unstructured(0.5),
                         nsamples=nsamples, seqlen=seqlen, seed=seed)
    started = time.perf_counter()
    result = create_variant(loaded, config)
    end_to_end = time.perf_counter() - started
    timings = result.manifest["timings"]
    return timings["total_pruning"] - timings.get("calibration", 0.0), end_to_end, timings


def cpu_section(runs: int) -> None:
    from backend.models.loader import load_model

    loaded = load_model("smollm2-135m-instruct", device="cpu")
    nsamples, seqlen, calibration = 16, 256, "lambada"
    windows = calibration_windows(loaded.tokenizer, calibration, nsamples, seqlen, 0)
    batch_size = max(1, 4096 // seqlen)
    decoder_floor(loaded, windows, batch_size)  # warm-up
    print(f"CPU: {loaded.name}, {nsamples} windows x {seqlen} tokens of {calibration}, "
          f"{torch.get_num_threads()} threads")
    for method in ("wanda", "sparsegpt"):
        # One untimed run first, as for the floor: the first prune in a process pays one-off
        # costs (first touch of the memory for the dense copies and the variant's tensors).
        floor = decoder_floor(loaded, windows, batch_size)
        seconds, _, _ = prune_seconds(loaded, method, calibration, nsamples, seqlen, seed=999_999)
        print(f"  {method:9s} warm-up run (not counted): ratio {seconds / floor:.2f}")
        ratios = []
        for run in range(runs):
            # The floor is measured right before and right after the prune and averaged: on a
            # shared machine the speed drifts, and a single floor taken earlier skews the ratio.
            before = decoder_floor(loaded, windows, batch_size)
            seconds, end_to_end, timings = prune_seconds(loaded, method, calibration, nsamples,
                                                         seqlen, seed=1000 * run + 1)  # new id each run
            after = decoder_floor(loaded, windows, batch_size)
            floor = (before + after) / 2
            ratios.append(seconds / floor)
            phases = ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())
            print(f"  {method:9s} run {run + 1}: floor {before:.2f}s/{after:.2f}s, pruning {seconds:.2f}s "
                  f"(ratio {seconds / floor:.2f}); end to end with writing {end_to_end:.2f}s [{phases}]")
        ratio = statistics.median(ratios)
        goal = GOALS_CPU[method]
        print(f"  {method:9s} median ratio pruning/floor = {ratio:.2f} (goal <= {goal}) "
              f"{'OK' if ratio <= goal else 'ABOVE GOAL'}")


def gpu_section() -> None:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from backend.models.adapters import adapter_for
    from backend.models.loader import LoadedModel

    tokenizer_dir = Path("models_cache/models/smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, vocab_size=len(tokenizer),
                         max_position_embeddings=4096)
    device = torch.device("cuda")
    with torch.device(device):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(config).eval()
        torch.set_default_dtype(torch.float32)
    loaded = LoadedModel(name="llama2-7b-shaped-random", model=model, tokenizer=tokenizer,
                         adapter=adapter_for(model), source="local")
    print(f"GPU: {torch.cuda.get_device_name(device)}, LLaMA-2-7B-shaped random bf16, 128 x 2048")
    calibration_windows(tokenizer, "lambada", 128, 2048, 0)  # build and cache the documents first
    for method in ("wanda", "sparsegpt"):
        torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        config_ = PruneConfig(method=method, calibration="lambada", spec=SparsitySpec.unstructured(0.5),
                              nsamples=128, seqlen=2048, seed=0)
        result = create_variant(loaded, config_)
        seconds = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        goal = GOALS_GPU_SECONDS[method]
        print(f"  {method:9s} end to end {seconds:.1f}s (goal <= {goal:.0f}s) "
              f"{'OK' if seconds <= goal else 'ABOVE GOAL'}; peak GPU memory {peak:.1f} GiB; "
              f"phases {result.manifest['timings']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    args = parser.parse_args()
    keep_freed_memory()  # as `prunelens` does at process start: the engine no longer switches it
    # Variants written by the benchmark go to a scratch cache, not the user's.
    os.environ.setdefault("PRUNELENS_CACHE_DIR", tempfile.mkdtemp(prefix="prunelens-bench-"))
    models = Path(os.environ["PRUNELENS_CACHE_DIR"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    embedded = Path("models_cache/models/smollm2-135m-instruct").resolve()
    if embedded.is_dir() and not (models / embedded.name).exists():
        (models / embedded.name).symlink_to(embedded)
    if not args.skip_cpu:
        cpu_section(args.runs)
    if torch.cuda.is_available():
        gpu_section()
    else:
        print("GPU section skipped: CUDA is not available on this machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
