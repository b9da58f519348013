"""CLI commands for pruning: ``prunelens prune | variants | perplexity``."""

from __future__ import annotations

import argparse
import json
import sys

from backend.cli import command
from backend.errors import UserError

METHOD_NAMES = ("magnitude", "wanda", "sparsegpt", "ria", "mi")
# Structured: remove whole MLP neurons, take --neuron-ratio (see backend/pruning/structured.py).
NEURON_METHOD_NAMES = ("mi", "random-neurons", "magnitude-neurons", "flap", "structured-obs")


def tqdm_progress(total_label: str):
    """A progress callback (fraction, message) drawn as a tqdm bar on stderr."""
    from tqdm import tqdm

    bar = tqdm(total=1000, desc=total_label, unit="", bar_format="{l_bar}{bar}| {postfix}",
               file=sys.stderr)

    def update(fraction: float, message: str) -> None:
        bar.n = int(fraction * 1000)
        bar.set_postfix_str(message, refresh=True)

    return bar, update


def spec_from_args(args):
    from backend.pruning.spec import SparsitySpec

    given = [flag for flag in ("sparsity", "pattern", "neuron_ratio") if getattr(args, flag) is not None]
    if len(given) > 1:
        raise UserError("give one of --sparsity, --pattern, --neuron-ratio")
    if args.pattern is not None:
        return SparsitySpec.parse(args.pattern)
    if args.neuron_ratio is not None:
        return SparsitySpec.parse(f"neurons:{args.neuron_ratio}")
    if args.method in NEURON_METHOD_NAMES:
        raise UserError(f"method {args.method!r} needs --neuron-ratio")
    return SparsitySpec.parse(args.sparsity if args.sparsity is not None else "0.5")


@command("prune", "prune a model with a method and calibration set; prints the variant id")
def _prune(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--method", required=True, choices=METHOD_NAMES + NEURON_METHOD_NAMES[1:],
                        help="magnitude | wanda | sparsegpt | ria; structured MLP neurons: mi | "
                             "random-neurons | magnitude-neurons | flap | structured-obs")
    parser.add_argument("--calibration", default="c4",
                        help="calibration set: c4, wikitext2, ptb, arc_challenge, arc_easy, boolq, rte, "
                             "sst2, wnli, lambada, imdb, or file:PATH (`prunelens datasets` says which "
                             "work offline)")
    parser.add_argument("--sparsity", default=None,
                        help="unstructured: fraction of weights removed, 0 < r < 1 (default 0.5)")
    parser.add_argument("--pattern", default=None,
                        help="N:M semi-structured, e.g. 2:4 = keep 2 of every 4 consecutive weights")
    parser.add_argument("--neuron-ratio", default=None,
                        help="structured methods: fraction of MLP neurons removed, 0 < r < 1")
    parser.add_argument("--compensation", choices=("on", "off"), default=None,
                        help="structured: fold removed neurons into the kept ones (default: on for "
                             "mi, structured-obs, flap)")
    parser.add_argument("--mi-estimator", choices=("pairwise", "joint"), default="pairwise",
                        help="mi: the paper's pairwise threshold rule, or joint Gaussian MI")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=2048,
                        help="tokens per window, capped at the model's context (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window draw (default 0)")
    parser.add_argument("--alpha", type=float, default=0.5, help="ria: exponent of ‖X_j‖₂ (default 0.5)")
    parser.add_argument("--channel-permutation", action="store_true",
                        help="ria with N:M: reallocate input channels before choosing the mask")
    parser.add_argument("--blocksize", type=int, default=128, help="sparsegpt: columns per block")
    parser.add_argument("--percdamp", type=float, default=0.01, help="sparsegpt: dampening fraction")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")

    def run(args) -> int:
        from backend.pruning.engine import PruneConfig, create_variant

        config = PruneConfig(
            method=args.method, calibration=args.calibration, spec=spec_from_args(args),
            nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, alpha=args.alpha,
            channel_permutation=args.channel_permutation, blocksize=args.blocksize,
            percdamp=args.percdamp, mi_estimator=args.mi_estimator,
            compensate=None if args.compensation is None else args.compensation == "on",
        )
        config.validate()  # before loading the model: bad input costs nothing
        from backend.models.loader import load_model

        loaded = load_model(args.model)
        bar, update = tqdm_progress(f"{args.method} {config.spec.label}")
        try:
            result = create_variant(loaded, config, progress=update)
        finally:
            bar.close()
        manifest = result.manifest
        if args.json:
            print(json.dumps(manifest, indent=2))
        else:
            reused = " (reused)" if result.reused else ""
            print(f"{result.variant_id}{reused}")
            print(f"achieved sparsity {manifest['achieved_sparsity']['overall']:.4f} "
                  f"(target {config.spec.target_sparsity:.4f}) over "
                  f"{len(manifest['achieved_sparsity']['per_linear'])} linear layers")
        return 0

    return run


@command("variants", "list pruned variants")
def _variants(parser: argparse.ArgumentParser):
    parser.add_argument("--base", default=None, help="only variants of this base model")
    parser.add_argument("--json", action="store_true")

    def run(args) -> int:
        from backend.pruning.variants import list_variants

        rows = list_variants(args.base)
        if args.json:
            print(json.dumps(rows, indent=2))
            return 0
        if not rows:
            print("no variants yet: create one with `prunelens prune`")
        for row in rows:
            print(f"{row['id']}\t{row['base_model']}\t{row['method']}\t{row['calibration']}\t"
                  f"{row['sparsity']}\tachieved {row['achieved_sparsity']['overall']:.4f}")
        return 0

    return run


@command("perplexity", "perplexity on non-overlapping windows of a held-out text")
def _perplexity(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None)
    parser.add_argument("--variant", default=None, help="a variant id (default: the dense model)")
    parser.add_argument("--text-set", default="lambada",
                        help="wikitext2 (test split, online), c4 (validation, online), lambada (offline)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=64, help="0 = all windows")

    def run(args) -> int:
        from contextlib import nullcontext

        from backend.evaluation.perplexity import perplexity
        from backend.models.loader import load_model
        from backend.pruning.variants import read_manifest, validate_variant_id, variant_applied

        if args.seqlen <= 1:
            raise UserError("--seqlen must be at least 2")
        if args.variant:
            manifest = read_manifest(validate_variant_id(args.variant))
            if args.model and args.model != manifest["base_model"]:
                raise UserError(f"variant {args.variant} belongs to {manifest['base_model']}")
            args.model = manifest["base_model"]
        loaded = load_model(args.model)
        bar, update = tqdm_progress("perplexity")
        try:
            context = variant_applied(loaded, args.variant) if args.variant else nullcontext()
            with context:
                result = perplexity(loaded, args.text_set, seqlen=args.seqlen,
                                    max_windows=args.max_windows or None, progress=update)
        finally:
            bar.close()
        print(f"{args.variant or 'dense'}\t{args.text_set}\tppl {result['perplexity']:.3f}\t"
              f"({result['windows']} windows x {result['seqlen']} tokens)")
        return 0

    return run
