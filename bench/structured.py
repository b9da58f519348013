"""Held-out perplexity of structured MLP-neuron pruning on the embedded SmolLM2-135M, in and out of domain.

The protocol is bench/protocol.py: calibration on LAMBADA's calibration passages, held-out
perplexity on LAMBADA's held-out passages (in domain) and on IMDB reviews and BoolQ passages
(out of domain), for each calibration budget (--budgets windows) and calibration draw (--seeds).
Each method removes --ratios of every layer's 1536 MLP neurons. ``random-neurons`` is what
removing neurons costs by chance.

Default (one-shot): the neuron statistics of every layer come from ONE forward pass of the dense
model per (budget, draw), and every method/ratio prunes all layers from them with the engine's
own per-layer call (method.prune on a LayerToPrune, applied by AppliedChanges); on a shared
2-core CPU the engine's layer-sequential run (each layer calibrated on the already-pruned earlier
layers: ``--sequential``) cost ~7 minutes per cell. The statistics keep per-fold moments
(4 folds of windows) for the methods whose fold-in is validated.
Prints one line per cell as it finishes and a markdown table per budget. Run: python bench/structured.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_cache import isolated_cache  # bench/ is the script's folder, first on sys.path
from protocol import BUDGETS, SEEDS, held_out_sets, markdown_table, measure

FOLDS = 4  # the default validation_folds of the compensated methods

# (label, method, options)
CONFIGS = [  # the comparisons the table exists for come first
    ("flap", "flap", {}),
    ("mi (weigh-output + comp.)", "mi", {"weigh_output": True}),
    ("structured-obs", "structured-obs", {}),
    ("random", "random-neurons", {}),
    ("mi (paper + comp., less-output victim)", "mi", {}),
    ("mi (weigh-output + comp., fixed ridge 0.01)", "mi", {"weigh_output": True, "fold_in_ridge": 0.01}),
    ("structured-obs (fixed ridge 0.01)", "structured-obs", {"fold_in_ridge": 0.01}),
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

    def __init__(self, loaded, args, nsamples: int, seed: int) -> None:

        from backend.data.windows import calibration_windows

        self.loaded = loaded
        self.layers = loaded.adapter.decoder_layers(loaded.model)
        self.windows = calibration_windows(loaded.tokenizer, args.calibration, nsamples, args.seqlen,
                                           seed, max_length=loaded.max_length)
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
                                        skip_leading=skip_leading, folds=FOLDS)
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
    parser.add_argument("--ratios", default="0.2")
    parser.add_argument("--only", default=None, help="'|'-separated labels to run (labels hold commas)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="calibration windows")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="calibration draws")
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out windows per set")
    parser.add_argument("--sequential", action="store_true",
                        help="prune through the engine, layer by layer (slow on CPU)")
    parser.add_argument("--calibration", default="lambada")
    args = parser.parse_args()

    scratch = isolated_cache("prunelens-bench-structured-")

    import torch

    from backend.config import get_settings
    from backend.models.loader import load_model
    from backend.pruning.config import PruneConfig
    from backend.pruning.engine import create_variant
    from backend.pruning.spec import SparsitySpec
    from backend.pruning.variants import variant_applied

    get_settings.cache_clear()
    torch.manual_seed(0)
    loaded = load_model("smollm2-135m-instruct")
    sets = held_out_sets(scratch)

    def held_out() -> dict[str, float]:
        return measure(loaded, sets, seqlen=args.seqlen, windows=args.eval_windows)

    ratios = [float(r) for r in args.ratios.split(",")]
    configs = [c for c in CONFIGS if args.only is None or c[0] in args.only.split("|")]
    dense = held_out()
    print(f"dense: {dense} ({args.eval_windows}x{args.seqlen} held-out tokens per set; "
          f"calibration {args.calibration}, {args.seqlen} tokens per window)", flush=True)
    rows: list[dict] = [{"budget": "-", "seed": "-", "ratio": "-", "method": "dense", **dense}]
    for nsamples in (int(b) for b in args.budgets.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            one_shot = None if args.sequential else OneShot(loaded, args, nsamples, seed)
            for ratio in ratios:
                for label, method, options in configs:
                    started = time.perf_counter()
                    config = PruneConfig(method=method, calibration=args.calibration,
                                         spec=SparsitySpec.neurons(ratio), nsamples=nsamples,
                                         seqlen=args.seqlen, seed=seed, **options)
                    if one_shot is not None:
                        with one_shot.pruned(config):
                            values = held_out()
                    else:
                        result = create_variant(loaded, config)
                        with variant_applied(loaded, result.variant_id):
                            values = held_out()
                    rows.append({"budget": nsamples, "seed": seed, "ratio": f"{ratio:.0%}", "method": label,
                                 **values})
                    print(f"{nsamples:>4} windows seed {seed} {ratio:>4.0%} {label:<44} "
                          + "  ".join(f"{name} {value:9.2f}" for name, value in values.items())
                          + f"  ({time.perf_counter() - started:.0f} s)", flush=True)
    print()
    print(markdown_table(rows, ["budget", "seed", "ratio", "method", *sets]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
