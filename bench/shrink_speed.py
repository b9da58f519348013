"""CPU forward speed of a shrunk structured variant vs the dense embedded SmolLM2-135M.

Prunes 50 % of every layer's MLP neurons (random-neurons: no calibration needed, and speed does not
depend on which neurons go) through the engine, exports the variant with shrink_structured, loads
both models with plain ``AutoModelForCausalLM.from_pretrained`` and times forwards of the same batch
in two modes: logits at every position (``logits_to_keep=0``, a perplexity pass) and at the last
position only (``logits_to_keep=1``, as generation's prefill). Dense and shrunk, both modes, are
interleaved in every repeat so that load from other processes hits all alike. Prints the median
seconds and the median of the per-repeat speed-up ratios (with their range), all from this one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cache import isolated_cache  # bench/ is the script's folder, first on sys.path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a loaded shared CPU more threads mostly spin)")
    args = parser.parse_args()

    work = isolated_cache("prunelens-bench-shrink-")

    import torch
    from transformers import AutoModelForCausalLM

    from backend.config import get_settings
    from backend.models.loader import load_model
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.shrink import shrink_structured
    from backend.pruning.spec import SparsitySpec

    torch.set_num_threads(args.threads)
    get_settings.cache_clear()
    loaded = load_model("smollm2-135m-instruct")
    variant = create_variant(loaded, PruneConfig(method="random-neurons",
                                                 spec=SparsitySpec.neurons(args.ratio))).variant_id
    info = shrink_structured(loaded, variant, work / "shrunk")
    dense_path = work / "cache" / "models" / "smollm2-135m-instruct"
    del loaded
    dense = AutoModelForCausalLM.from_pretrained(dense_path, dtype=torch.float32).eval()
    small = AutoModelForCausalLM.from_pretrained(work / "shrunk", dtype=torch.float32).eval()
    input_ids = torch.randint(0, dense.config.vocab_size, (args.batch, args.seqlen),
                              generator=torch.Generator().manual_seed(0))

    def seconds(model, logits_to_keep: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=logits_to_keep)
        return time.perf_counter() - start

    # 0 = logits at every position (a perplexity pass); 1 = the last position only, as generation
    # runs its prefill: the 49152 x 576 lm_head, which shrinking does not touch, then counts once.
    modes = {"full logits": 0, "last-position logits": 1}
    for keep in modes.values():  # warm-up
        seconds(dense, keep), seconds(small, keep)
    timings: dict[tuple[str, str], list[float]] = {(mode, which): [] for mode in modes
                                                   for which in ("dense", "shrunk")}
    for _ in range(args.repeats):  # interleaved, so that load from other processes hits all alike
        for mode, keep in modes.items():
            timings[(mode, "dense")].append(seconds(dense, keep))
            timings[(mode, "shrunk")].append(seconds(small, keep))
    print(f"MLP width {info['dense_size']} -> {info['intermediate_size']}; parameters "
          f"{info['dense_parameters'] / 1e6:.1f}M -> {info['parameters'] / 1e6:.1f}M; "
          f"torch threads {torch.get_num_threads()}; forward {args.batch}x{args.seqlen} tokens, "
          f"{args.repeats} interleaved repeats")
    for mode in modes:
        dense_runs, small_runs = timings[(mode, "dense")], timings[(mode, "shrunk")]
        ratios = sorted(d / s for d, s in zip(dense_runs, small_runs, strict=True))
        print(f"{mode:<21}: dense median {statistics.median(dense_runs):.3f} s, shrunk median "
              f"{statistics.median(small_runs):.3f} s; speed-up median of per-repeat ratios "
              f"{statistics.median(ratios):.2f}x (range {ratios[0]:.2f}-{ratios[-1]:.2f}; 1.00x = no gain)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
