"""Held-out perplexity of structured MLP-neuron pruning on the embedded SmolLM2-135M.

Each method removes 10/20/30/50 % of every layer's 1536 MLP neurons, calibrated on LAMBADA's
calibration passages, then the model's perplexity is measured on LAMBADA's held-out passages (a
disjoint split: backend/data/sources.py) with the project's perplexity function.
``random-neurons`` is what removing neurons costs by chance.

Default (one-shot): the neuron statistics of every layer come from ONE forward pass of the dense
model, and every method/ratio prunes all layers from them with the engine's own per-layer call
(method.prune on a LayerToPrune, applied by AppliedChanges); on a shared 2-core CPU the engine's layer-sequential run (each layer calibrated on the already-pruned earlier
layers: ``--sequential``) cost ~7 minutes per cell.
Prints a markdown table (perplexity; dense first). Run: python bench/structured.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (label, method, options)
CONFIGS = [  # the comparisons the table exists for come first
    ("mi (paper + comp.)", "mi", {}),
    ("random", "random-neurons", {}),
    ("flap", "flap", {}),
    ("structured-obs", "structured-obs", {}),
    ("mi (paper, no comp.)", "mi", {"compensate": False}),
    ("magnitude", "magnitude-neurons", {}),
    ("mi (joint + comp.)", "mi", {"estimator": "joint"}),
]


class OneShot:
    """Neuron statistics of every layer from one dense forward; prunes all layers from them."""

    def __init__(self, loaded, args) -> None:
        import torch

        from backend.data.windows import calibration_windows
        from backend.pruning.stats import InputStatistics

        self.loaded = loaded
        adapter = loaded.adapter
        self.layers = adapter.decoder_layers(loaded.model)
        windows = calibration_windows(loaded.tokenizer, args.calibration, args.nsamples, args.seqlen,
                                      0, max_length=loaded.max_length)
        self.stats = []
        handles = []
        for layer in self.layers:
            down = layer.get_submodule(adapter.mlp_output)
            stats = InputStatistics(down.weight.shape[1], "cpu", covariance=True)
            self.stats.append(stats)
            handles.append(down.register_forward_pre_hook(lambda _m, a, s=stats: s.update(a[0])))
        with torch.no_grad():
            for chunk in windows.split(8):
                loaded.model(input_ids=chunk, use_cache=False)
        for handle in handles:
            handle.remove()

    def pruned(self, config):
        """A context in which every layer is pruned by ``config``'s method from the dense statistics."""
        import contextlib

        from backend.pruning.engine import AppliedChanges
        from backend.pruning.registry import LayerToPrune

        method, options, adapter = config.info, config.method_options, self.loaded.adapter

        @contextlib.contextmanager
        def applied():
            changes = AppliedChanges()
            try:
                for index, (layer, stats) in enumerate(zip(self.layers, self.stats, strict=True)):
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
    parser.add_argument("--only", default=None, help="comma-separated labels to run")
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--sequential", action="store_true",
                        help="prune through the engine, layer by layer (slow on CPU)")
    parser.add_argument("--calibration", default="lambada")
    parser.add_argument("--heldout", default="lambada")
    args = parser.parse_args()

    cache = Path(tempfile.mkdtemp(prefix="prunelens-bench-structured-"))
    shared = Path(os.environ.get("PRUNELENS_TEST_SHARED_CACHE", "models_cache")) / "models"
    (cache / "models").symlink_to(shared.resolve())
    os.environ["PRUNELENS_CACHE_DIR"] = str(cache)

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
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only.split(",")]
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
            print(f"{label:<22} {ratio:>4.0%}  ppl {value:10.2f}  ({time.perf_counter() - started:.0f} s)",
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
