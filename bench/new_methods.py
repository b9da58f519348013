"""Held-out perplexity of OWL, DSnoT and the depth methods on the embedded model, in and out of the
calibration's domain.

The protocol is bench/protocol.py (the one bench/structured.py uses): calibration on LAMBADA's
calibration passages (``--nsamples`` windows of ``--seqlen`` tokens, draw ``--seed``), held-out
perplexity on LAMBADA's held-out passages (in domain) and on IMDB reviews and BoolQ passages (out of
domain, never read by the calibration), ``--eval-windows`` windows of ``--seqlen`` tokens each.
Rows: uniform vs OWL for Wanda and SparseGPT and Wanda vs Wanda + DSnoT at 50/60/70 %; ShortGPT vs
MI-PRUN vs random blocks at 2, 4 and 6 dropped blocks. Prints a markdown table (docs/pruning-methods.md).

    PRUNELENS_TEST_SHARED_CACHE=models_cache python bench/new_methods.py [--only wanda,shortgpt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_cache import isolated_cache  # bench/ is the script's folder, first on sys.path
from protocol import held_out_sets, markdown_table, measure

SPARSITIES = ("0.5", "0.6", "0.7")
BLOCKS = (2, 4, 6)
WEIGHT_ROWS = (  # (label, method, options)
    ("wanda", "wanda", {}),
    ("wanda + OWL", "wanda", {"sparsity_profile": "owl"}),
    ("wanda + DSnoT", "wanda", {"refine": "dsnot"}),
    ("sparsegpt", "sparsegpt", {}),
    ("sparsegpt + OWL", "sparsegpt", {"sparsity_profile": "owl"}),
)
DEPTH_ROWS = (("shortgpt", "shortgpt", {}), ("mi-prun", "mi-prun", {}), ("random-blocks", "random-blocks", {}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsamples", type=int, default=16, help="calibration windows")
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per calibration and held-out window")
    parser.add_argument("--seed", type=int, default=0, help="calibration draw")
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows per set")
    parser.add_argument("--only", default=None, help="comma-separated row labels' first words (wanda, shortgpt, ...)")
    parser.add_argument("--skip", default="", help="comma-separated row labels left out (e.g. 'wanda + DSnoT')")
    parser.add_argument("--sparsities", default=",".join(SPARSITIES))
    parser.add_argument("--blocks", default=",".join(map(str, BLOCKS)))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    scratch = isolated_cache("prunelens-new-methods-")

    import torch

    from backend.models.loader import load_model
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec
    from backend.pruning.variants import variant_applied

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    sets = held_out_sets(scratch)
    wanted = None if args.only is None else set(args.only.split(","))

    def held_out() -> dict[str, float]:
        return measure(loaded, sets, seqlen=args.seqlen, windows=args.eval_windows)

    results = [{"method": "dense", "amount": "-", **held_out(), "prune s": 0.0}]
    print(results[0], flush=True)
    sparsities = args.sparsities.split(",")
    # The highest sparsity first (where OWL and DSnoT are expected to matter), then the depth rows, then
    # the lower sparsities: on a loaded machine the run may be stopped early; rows print as they finish.
    def weight_jobs(chosen):
        return [(label, method, options, {"spec": SparsitySpec.parse(sparsity)}, f"{float(sparsity):.0%}")
                for sparsity in chosen for label, method, options in WEIGHT_ROWS]

    jobs = weight_jobs(sparsities[-1:])
    jobs += [(label, method, {**options, "drop_blocks": int(count)}, {}, f"{count} blocks")
             for count in args.blocks.split(",") if count for label, method, options in DEPTH_ROWS]
    jobs += weight_jobs(sparsities[:-1])
    for label, method, options, spec, amount in jobs:
        if (wanted is not None and label.split()[0] not in wanted) or label in args.skip.split(","):
            continue
        config = PruneConfig(method, calibration="lambada", nsamples=args.nsamples, seqlen=args.seqlen,
                             seed=args.seed, options=options, **spec)
        started = time.perf_counter()
        result = create_variant(loaded, config)
        seconds = time.perf_counter() - started
        with variant_applied(loaded, result.variant_id):
            scores = held_out()
        dropped = result.manifest.get("dropped_blocks")
        row = {"method": label + (f" {dropped}" if dropped else ""), "amount": amount, **scores,
               "prune s": round(seconds, 1), "variant": result.variant_id,
               "achieved": result.manifest["achieved_sparsity"]["overall"]}
        results.append(row)
        print(row, flush=True)
    print(f"\n{args.nsamples} x {args.seqlen} calibration tokens (lambada, draw {args.seed}); "
          f"{args.eval_windows} x {args.seqlen} held-out tokens per set\n")
    print(markdown_table(results, ["method", "amount", *sets, "prune s"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
