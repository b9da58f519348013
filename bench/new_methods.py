"""Held-out perplexity of OWL, DSnoT and the depth methods on the embedded model, in and out of the
calibration's domain.

Calibration: LAMBADA's calibration passages (16 windows x 128 tokens by default: a small shared CPU).
Held-out perplexity on the first windows of LAMBADA's held-out passages (the calibration's domain)
and on seeded windows of two other corpora (IMDB reviews, BoolQ passages; offline sets that have no
held-out split of their own, and that the LAMBADA calibration never reads). Rows:
uniform vs OWL for Wanda and SparseGPT and Wanda vs Wanda + DSnoT at 50/60/70 %; ShortGPT vs MI-PRUN
vs random blocks at 2, 4 and 6 dropped blocks. Prints a markdown table (docs/pruning-methods.md).

    PRUNELENS_TEST_SHARED_CACHE=models_cache python bench/new_methods.py [--only wanda,shortgpt]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_cache import isolated_cache

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
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--heldout", default="lambada,imdb,boolq", help="held-out sets; the first is in-domain")
    parser.add_argument("--eval-seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=4)
    parser.add_argument("--only", default=None, help="comma-separated row labels' first words (wanda, shortgpt, ...)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    isolated_cache("prunelens-new-methods-")

    import torch

    from backend.data.windows import calibration_windows, heldout_windows
    from backend.models.loader import load_model
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec
    from backend.pruning.variants import variant_applied

    torch.set_num_threads(args.threads)
    loaded = load_model("smollm2-135m-instruct", device="cpu", dtype="float32")
    heldout = args.heldout.split(",")
    wanted = None if args.only is None else set(args.only.split(","))

    def windows_of(name: str) -> torch.Tensor:  # [windows, eval_seqlen]
        if name == "lambada":
            return heldout_windows(loaded.tokenizer, name, args.eval_seqlen, max_windows=args.eval_windows)
        return calibration_windows(loaded.tokenizer, name, args.eval_windows, args.eval_seqlen, seed=1234)

    evaluation_windows = {name: windows_of(name) for name in heldout}

    def evaluate() -> list[float]:
        scores = []
        with torch.no_grad():
            for name in heldout:
                total, tokens = 0.0, 0
                for chunk in evaluation_windows[name].split(2):
                    logits = loaded.model(input_ids=chunk, use_cache=False).logits.float()
                    total += float(torch.nn.functional.cross_entropy(
                        logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="sum"))
                    tokens += chunk[:, 1:].numel()
                scores.append(float(torch.exp(torch.tensor(total / tokens))))
        return scores

    results = [{"row": "dense", "amount": "-", "perplexity": evaluate(), "seconds": 0.0}]
    print(results[0], flush=True)
    # 70 % first (where OWL and DSnoT are expected to matter), then the depth rows, then 50 and 60 %:
    # on a loaded machine the run may be stopped before the end, and the rows print as they finish.
    def weight_jobs(sparsities):
        return [(label, method, options, {"spec": SparsitySpec.parse(sparsity)}, sparsity)
                for sparsity in sparsities for label, method, options in WEIGHT_ROWS]

    jobs = weight_jobs(SPARSITIES[-1:])
    jobs += [(label, method, {**options, "drop_blocks": count}, {}, f"{count} blocks")
             for count in BLOCKS for label, method, options in DEPTH_ROWS]
    jobs += weight_jobs(SPARSITIES[:-1])
    for label, method, options, spec, amount in jobs:
        if wanted is not None and label.split()[0] not in wanted:
            continue
        config = PruneConfig(method, calibration="lambada", nsamples=args.nsamples, seqlen=args.seqlen,
                             options=options, **spec)
        started = time.perf_counter()
        result = create_variant(loaded, config)
        seconds = time.perf_counter() - started
        with variant_applied(loaded, result.variant_id):
            scores = evaluate()
        row = {"row": label, "amount": amount, "perplexity": scores, "seconds": seconds,
               "variant": result.variant_id,
               "achieved": result.manifest["achieved_sparsity"]["overall"],
               "dropped_blocks": result.manifest.get("dropped_blocks")}
        results.append(row)
        print(row, flush=True)
    print(f"\n| method | amount | {' | '.join(heldout)} | prune s |\n|---|---|" + "---:|" * (len(heldout) + 1))
    for row in results:
        cells = " | ".join(f"{value:.2f}" for value in row["perplexity"])
        extra = f" (blocks {row['dropped_blocks']})" if row.get("dropped_blocks") else ""
        print(f"| {row['row']}{extra} | {row['amount']} | {cells} | {row['seconds']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
