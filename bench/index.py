"""Cost of a neuron index: (index build) / (plain forward passes with the LM head over the same
tokens, same models), and peak RSS at N tokens against N/10 tokens.

The embedded model and one Wanda 50% variant (pruned here, in a throwaway cache). Each token
count runs in a fresh child process that loads both models, times plain forwards over the build's
own batches (the dense model and the variant, LM head included, as the build needs for the KL),
then times the index pass and the write, and reports its peak RSS. Goals: time ratio <= 1.3,
RSS(N) within 10% of RSS(N/10).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIME_GOAL, RSS_GOAL = 1.3, 1.10


def child(tokens: int, variant: str, batch_tokens: int) -> dict:
    import torch

    from backend.neurons.build import IndexInputs, accumulate
    from backend.neurons.corpus import batch_tensors, plan_batches
    from backend.neurons.models import load_index_models
    from backend.neurons.request import IndexRequest
    from backend.neurons.store import index_dir
    from backend.neurons.writer import write_index

    request = IndexRequest(variants=[variant], tokens=tokens, batch_tokens=batch_tokens)
    dense, variants = load_index_models(request)
    inputs = IndexInputs.prepare(request, dense)
    documents = range(len(inputs.corpus.documents))
    pad = dense.tokenizer.pad_token_id or 0
    started = time.perf_counter()
    with torch.inference_mode():
        for batch in plan_batches(inputs.corpus.documents, documents, batch_tokens):
            tensors = batch_tensors(batch, inputs.corpus.documents, pad, dense.device)
            for loaded in (dense, *variants.values()):
                loaded.model(input_ids=tensors.input_ids, attention_mask=tensors.attention_mask, use_cache=False)
    plain = time.perf_counter() - started
    started = time.perf_counter()
    state = accumulate(dense, variants, inputs, documents)
    indexed = time.perf_counter() - started
    started = time.perf_counter()
    folder = index_dir(write_index(state, inputs, dense.tokenizer, f"bench-{tokens}"))
    written = time.perf_counter() - started
    return {
        "folder_mb": sum(path.stat().st_size for path in folder.iterdir()) / 2**20,
        "tokens": state.tokens,
        "plain_s": plain,
        "pass_s": indexed,
        "write_s": written,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true", help="4000 tokens (and 1000 for the RSS baseline)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from backend.process_setup import configure_process

        configure_process()
        print(json.dumps(child(args.child, args.variant, args.batch_tokens)))
        return 0

    from bench.bench_cache import isolated_cache

    isolated_cache("prunelens-bench-index-")
    from backend.models.loader import load_model
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec

    loaded = load_model("smollm2-135m-instruct")
    variant = create_variant(
        loaded, PruneConfig("wanda", calibration="lambada", spec=SparsitySpec.parse("0.5"), nsamples=16, seqlen=256)
    ).variant_id
    del loaded
    tokens = 4000 if args.quick else args.tokens
    results = {}
    print(f"index bench: embedded model + {variant}, batch_tokens {args.batch_tokens}", flush=True)
    for count in (max(1000, tokens // 10), tokens):  # the small run first: its figures come early
        output = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(count),
                "--variant",
                variant,
                "--batch-tokens",
                str(args.batch_tokens),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = results[count] = json.loads(output.strip().splitlines()[-1])
        print(
            f"  {row['tokens']:>7} tokens: plain forwards {row['plain_s']:7.1f} s, index pass {row['pass_s']:7.1f} s "
            f"({row['pass_s'] / row['plain_s']:.2f}x), write {row['write_s']:5.1f} s, "
            f"peak RSS {row['peak_rss_mb']:7.0f} MB, index folder {row['folder_mb']:6.1f} MB",
            flush=True,
        )
    big, small = results[tokens], results[max(1000, tokens // 10)]
    ratio = (big["pass_s"] + big["write_s"]) / big["plain_s"]
    print(
        f"  time: index (pass + write) / plain forwards = {ratio:.2f} "
        f"(pass only {big['pass_s'] / big['plain_s']:.2f}); "
        f"goal <= {TIME_GOAL}"
    )
    rss = big["peak_rss_mb"] / small["peak_rss_mb"]
    print(f"  memory: peak RSS {big['tokens']} / {small['tokens']} tokens = {rss:.3f}; goal <= {RSS_GOAL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
