"""Patching cost on the embedded model: the causal check against the forward passes it needs.

50 SST-2 validation examples, one pruned variant, 20 matched-random draws, 20 selected neurons
(seeded, spread over 10 layers). Patching = per example one dense pass (recording the neurons)
and one batched variant pass of draws + 3 rows (variant, selected, all neurons of the selected
layers, the draws), plus applying the variant and the statistics. Floor = the same forward
passes without any hook (dense batch 1 + variant batch draws + 3 per example), measured in the
same run, interleaved (floor, patching, floor, ...). Goal: ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.sources import labelled_examples
from backend.models.loader import load_model
from backend.nsa.causal import FoldSelection, causal_check, two_folds
from backend.nsa.probe import encode_probe, label_log_probs
from backend.nsa.tasks import get_task
from backend.pruning.variants import variant_applied
from bench.nsa import ensure_variants

GOAL = 1.3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=50)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variant", default="", help="variant id (default: create/reuse a Wanda 50%% one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    loaded = load_model("smollm2-135m-instruct", device=args.device)
    variant_id = ensure_variants(loaded, [args.variant] if args.variant else [])[1 if not args.variant else 0]
    task = get_task("sentiment")
    examples = labelled_examples("sst2", args.examples, args.seed)
    probes = [encode_probe(loaded.tokenizer, ex["text"], task, loaded.max_length) for ex in examples]
    labels = [task.label_index(ex["label_text"]) for ex in examples]
    layer_count = len(loaded.adapter.decoder_layers(loaded.model))
    width = loaded.adapter.neuron_count(loaded.model)
    generator = torch.Generator().manual_seed(args.seed)
    layers = torch.randperm(layer_count, generator=generator)[:10]
    selected = torch.stack([layers[i % 10] * width + torch.randint(width, (1,), generator=generator)[0]
                            for i in range(20)]).unique()
    folds = [FoldSelection(test=fold, selected=selected) for fold in two_folds(len(probes), args.seed)]
    rows = 3 + args.draws

    @contextlib.contextmanager
    def applied():
        with variant_applied(loaded, variant_id):
            yield loaded.model

    def patching() -> dict:
        return causal_check(loaded.model, loaded.adapter, probes, labels, folds, variants=[(variant_id, applied)],
                            ablate=False, draws=args.draws, seed=args.seed)

    @torch.inference_mode()
    def floor() -> None:
        for probe in probes:
            label_log_probs(loaded.model, probe)
        with variant_applied(loaded, variant_id):
            for probe in probes:
                label_log_probs(loaded.model, probe, batch=rows)

    # floor, patching, floor, patching, ..., floor: each patching run sits between two floors, so
    # a shared machine's changing load moves both sides alike.
    patch_times, floor_times = [], []
    result = None
    start = time.perf_counter()
    floor()
    floor_times.append(time.perf_counter() - start)
    for _ in range(args.runs):
        start = time.perf_counter()
        result = patching()
        patch_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        floor()
        floor_times.append(time.perf_counter() - start)
    tokens = sum(len(p.input_ids) for p in probes)
    ratio = statistics.median(patch_times) / statistics.median(floor_times)
    print(f"patching: {len(probes)} SST-2 examples ({tokens} tokens), variant {variant_id}, "
          f"{selected.numel()} neurons in {len(set((selected // width).tolist()))} layers, {args.draws} draws, "
          f"{args.runs} runs, device {loaded.device}")
    print(f"  floor (dense x1 + variant x{rows} rows per example)  median {statistics.median(floor_times):7.2f} s")
    print(f"  causal check, patching only                       median {statistics.median(patch_times):7.2f} s")
    print(f"  ratio patching / floor = {ratio:.3f}  (goal <= {GOAL:.1f}) {'OK' if ratio <= GOAL else 'ABOVE GOAL'}")
    print(f"  {result['patching'][0]['reading']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
