"""CPU forward speed of a shrunk structured variant vs the dense embedded SmolLM2-135M.

Prunes 50 % of every layer's MLP neurons (random-neurons: no calibration needed, and speed does not
depend on which neurons go) through the engine, exports the variant with shrink_structured, loads
both models with plain ``AutoModelForCausalLM.from_pretrained`` and times full forwards (logits
included) of the same batch, dense and shrunk interleaved so that load from other processes hits
both alike. Prints the median seconds of each and the speed-up ratio measured in this one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a loaded shared CPU more threads mostly spin)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="prunelens-bench-shrink-"))
    shared = Path(os.environ.get("PRUNELENS_TEST_SHARED_CACHE", "models_cache")) / "models"
    (work / "cache").mkdir()
    (work / "cache" / "models").symlink_to(shared.resolve())
    os.environ["PRUNELENS_CACHE_DIR"] = str(work / "cache")

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
    dense_path = shared / "smollm2-135m-instruct"
    del loaded
    dense = AutoModelForCausalLM.from_pretrained(dense_path, dtype=torch.float32).eval()
    small = AutoModelForCausalLM.from_pretrained(work / "shrunk", dtype=torch.float32).eval()
    input_ids = torch.randint(0, dense.config.vocab_size, (args.batch, args.seqlen),
                              generator=torch.Generator().manual_seed(0))

    def seconds(model) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False)
        return time.perf_counter() - start

    seconds(dense), seconds(small)  # warm-up
    timings = {"dense": [], "shrunk": []}
    for _ in range(args.repeats):
        timings["dense"].append(seconds(dense))
        timings["shrunk"].append(seconds(small))
    dense_s, small_s = statistics.median(timings["dense"]), statistics.median(timings["shrunk"])
    print(f"MLP width {info['dense_size']} -> {info['intermediate_size']}; parameters "
          f"{info['dense_parameters'] / 1e6:.1f}M -> {info['parameters'] / 1e6:.1f}M; "
          f"torch threads {torch.get_num_threads()}")
    print(f"forward {args.batch}x{args.seqlen} tokens, median of {args.repeats} (interleaved): "
          f"dense {dense_s:.3f} s, shrunk {small_s:.3f} s, speed-up {dense_s / small_s:.2f}x "
          f"(per-run ratios {min(d / s for d, s in zip(timings['dense'], timings['shrunk'], strict=True)):.2f}"
          f"-{max(d / s for d, s in zip(timings['dense'], timings['shrunk'], strict=True)):.2f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
