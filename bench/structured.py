"""Held-out perplexity of structured MLP-neuron pruning on the embedded SmolLM2-135M.

Each method removes 10/20/30/50 % of every layer's 1536 MLP neurons, calibrated on LAMBADA's
calibration passages, then the model's perplexity is measured on LAMBADA's held-out passages (a
disjoint split: backend/data/sources.py) with the project's perplexity function.
``random-neurons`` is what removing neurons costs by chance.

Default (one-shot): the neuron statistics of every layer come from ONE forward pass of the dense
model, and every method/ratio prunes all layers from them with the engine's own per-layer call
(method.prune on a LayerToPrune, applied by AppliedChanges); on a shared 2-core CPU the engine's
layer-sequential run (each layer calibrated on the already-pruned earlier
layers: ``--sequential``) cost ~7 minutes per cell.
Prints a markdown table (perplexity; dense first). Run: python bench/structured.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cache import isolated_cache  # bench/ is the script's folder, first on sys.path

# (label, method, options)
CONFIGS = [  # the comparisons the table exists for come first
    ("mi (weigh-output + comp.)", "mi", {"weigh_output": True}),
    ("mi (paper + comp., less-output victim)", "mi", {}),
    ("random", "random-neurons", {}),
    ("flap", "flap", {}),
    ("structured-obs", "structured-obs", {}),
    ("mi (paper + comp., more-redundant victim)", "mi", {"victim": "more-redundant"}),
    ("mi (paper, no comp.)", "mi", {"compensate": False}),
    ("magnitude", "magnitude-neurons", {}),
    ("mi (joint + comp.)", "mi", {"estimator": "joint"}),
    ("mi (joint, weigh-output + comp.)", "mi", {"estimator": "joint", "weigh_output": True}),
    ("mi (weigh-output + comp., sink 1)", "mi", {"weigh_output": True, "sink_tokens": 1}),
    ("mi (paper + comp., sink 1)", "mi", {"sink_tokens": 1}),
    ("flap (sink 1)", "flap", {"sink_tokens": 1}),
]


class OneShot:
    """Neuron statistics of every layer from one dense forward; prunes all layers from them."""

    def __init__(self, loaded, args) -> None:

        from backend.data.windows import calibration_windows

        self.loaded = loaded
        self.layers = loaded.adapter.decoder_layers(loaded.model)
        self.windows = calibration_windows(loaded.tokenizer, args.calibration, args.nsamples, args.seqlen,
                                           0, max_length=loaded.max_length)
        self._stats: dict[int, list] = {}  # per sink_tokens: one InputStatistics per layer

    def stats(self, skip_leading: int) -> list:
        """Every layer's neuron statistics from one dense forward, the first tokens left out."""
        import torch

        from backend.pruning.stats import InputStatistics

        if skip_leading not in self._stats:
            collected, handles = [], []
            for layer in self.layers:
                down = layer.get_submodule(self.loaded.adapter.mlp_output)
                stats = InputStatistics(down.weight.shape[1], "cpu", covariance=True,
                                        skip_leading=skip_leading)
                collected.append(stats)
                handles.append(down.register_forward_pre_hook(lambda _m, a, s=stats: s.update(a[0])))
            try:
                with torch.no_grad():
                    for chunk in self.windows.split(8):
                        self.loaded.model(input_ids=chunk, use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            self._stats[skip_leading] = collected
        return self._stats[skip_leading]

    def pruned(self, config):
        """A context in which every layer is pruned by ``config``'s method from the dense statistics."""
        import contextlib

        from backend.pruning.engine import AppliedChanges
        from backend.pruning.registry import LayerToPrune

        method, options, adapter = config.info, config.method_options, self.loaded.adapter
        needs = method.input_needs(options)
        layer_stats = self.stats(needs.skip_leading if needs is not None else 0)

        @contextlib.contextmanager
        def applied():
            changes = AppliedChanges()
            try:
                for index, (layer, stats) in enumerate(zip(self.layers, layer_stats, strict=True)):
                    linears = adapter.prunable_linears(layer)
                    view = LayerToPrune(index, linears, {adapter.mlp_output: stats}, adapter)
                    changes.apply(str(index), linears, method.prune(view, options, config.spec))
                yield
            finally:
                changes.restore()

        return applied()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.1,0.2,0.3,0.5")
    parser.add_argument("--only", default=None, help="'|'-separated labels to run (labels hold commas)")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--sequential", action="store_true",
                        help="prune through the engine, layer by layer (slow on CPU)")
    parser.add_argument("--calibration", default="lambada")
    parser.add_argument("--heldout", default="lambada")
    args = parser.parse_args()

    isolated_cache("prunelens-bench-structured-")

    import torch

    from backend.config import get_settings
    from backend.evaluation.perplexity import perplexity
    from backend.models.loader import load_model
    from backend.pruning.config import PruneConfig
    from backend.pruning.engine import create_variant
    from backend.pruning.spec import SparsitySpec
    from backend.pruning.variants import variant_applied

    get_settings.cache_clear()
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m-instruct")

    def held_out() -> float:
        return perplexity(loaded, args.heldout, seqlen=args.seqlen, max_windows=args.eval_windows)["perplexity"]

    ratios = [float(r) for r in args.ratios.split(",")]
    one_shot = None if args.sequential else OneShot(loaded, args)
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only.split("|")]
    dense = held_out()
    print(f"dense perplexity {dense:.2f} ({args.heldout} held-out, {args.eval_windows}x{args.seqlen} tokens; "
          f"calibration {args.calibration} {args.nsamples}x{args.seqlen})", flush=True)
    table: dict[str, dict[float, float]] = {}
    for label, method, options in configs:
        for ratio in ratios:
            started = time.perf_counter()
            config = PruneConfig(method=method, calibration=args.calibration,
                                 spec=SparsitySpec.neurons(ratio), nsamples=args.nsamples,
                                 seqlen=args.seqlen, seed=0, **options)
            if one_shot is not None:
                with one_shot.pruned(config):
                    value = held_out()
            else:
                result = create_variant(loaded, config)
                with variant_applied(loaded, result.variant_id):
                    value = held_out()
            table.setdefault(label, {})[ratio] = value
            print(f"{label:<42} {ratio:>4.0%}  ppl {value:10.2f}  ({time.perf_counter() - started:.0f} s)",
                  flush=True)

    print()
    print("| method | " + " | ".join(f"{r:.0%} removed" for r in ratios) + " |")
    print("|---|" + "---:|" * len(ratios))
    print(f"| dense | {dense:.2f}" + " |" * len(ratios))
    for label, row in table.items():
        print(f"| {label} | " + " | ".join(f"{row[r]:.2f}" for r in ratios) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
