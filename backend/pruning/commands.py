"""CLI commands for pruning: ``prunelens prune | methods | variants | perplexity``.

The ``prune`` arguments for methods and their options are generated from the method registry
(``backend.pruning.registry``): one ``--option`` per option name, validated by the method's
options model.
"""

from __future__ import annotations

import argparse
import json
import sys

from backend.commands import add_field_argument, command, field_help, given_arguments
from backend.errors import UserError


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
    from backend.pruning.registry import get_method

    if get_method(args.method).depth:
        if given:
            raise UserError(f"method {args.method!r} removes whole decoder blocks: give --drop-blocks K, "
                            f"not --{given[0].replace('_', '-')}")
        return SparsitySpec.parse("0.5")  # not used by depth methods, nor part of their variant id
    if args.pattern is not None:
        return SparsitySpec.parse(args.pattern)
    if args.neuron_ratio is not None:
        return SparsitySpec.parse(f"neurons:{args.neuron_ratio}")
    if get_method(args.method).structured:
        raise UserError(f"method {args.method!r} needs --neuron-ratio")
    return SparsitySpec.parse(args.sparsity if args.sparsity is not None else "0.5")


def add_option_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """One ``--name`` per option of the registered methods (methods sharing a name share it).

    Defaults stay None, so an option not given takes the method's own default; the options
    model checks values and bounds (``PruningMethod.parse_options``). Returns the option names.
    """
    from pydantic.fields import FieldInfo

    from backend.pruning.registry import methods

    takers: dict[str, list[tuple[str, FieldInfo]]] = {}
    for method in methods().values():
        for name, info in method.options.model_fields.items():
            takers.setdefault(name, []).append((method.name, info))
    for name, entries in takers.items():
        help_text = "; ".join(f"{method}: {field_help(info)}" for method, info in entries)
        add_field_argument(parser, name, entries[0][1].annotation, help_text)
    return list(takers)


def options_from_args(args, option_names: list[str]) -> dict:
    """The options given on the command line; one the method does not take is refused by it."""
    return given_arguments(args, option_names)


def add_protection_arguments(parser: argparse.ArgumentParser) -> None:
    """--protect / --protect-task / --protect-ratio / --protect-mode / --protect-factor (docs/guided-pruning.md)."""
    from backend.guided.protection_sources import DEFAULT_RATIO, PROTECT_TASKS, PROTECT_TEXTS
    from backend.pruning.protection import DEFAULT_UPWEIGHT_FACTOR, PROTECTION_MODES

    parser.add_argument("--protect", default=None, metavar="RESULT_ID[:TOP_K]",
                        help="protect the neurons of a stored NSA result (its first TOP_K by score; default all)")
    parser.add_argument("--protect-task", default=None, choices=list(PROTECT_TASKS),
                        help="protect the neurons NSA selects on this task's examples (outside the "
                             "default evaluation sample)")
    parser.add_argument("--protect-ratio", type=float, default=None,
                        help=f"with --protect-task: fraction of all MLP neurons, in (0, 0.5] (default {DEFAULT_RATIO})")
    parser.add_argument("--protect-texts", type=int, default=PROTECT_TEXTS,
                        help=f"with --protect-task: examples NSA selects on (default {PROTECT_TEXTS})")
    parser.add_argument("--protect-mode", default="keep", choices=PROTECTION_MODES,
                        help="keep: protected weights are never pruned (the quota moves to other weights); "
                             "upweight: their saliency is multiplied by --protect-factor")
    parser.add_argument("--protect-factor", type=float, default=DEFAULT_UPWEIGHT_FACTOR,
                        help=f"upweight factor (default {DEFAULT_UPWEIGHT_FACTOR:g})")


def protection_request_from_args(args):
    from backend.guided.protection_sources import ProtectionRequest

    return ProtectionRequest(reference=args.protect, task=args.protect_task, ratio=args.protect_ratio,
                             mode=args.protect_mode, factor=args.protect_factor, texts=args.protect_texts,
                             seed=args.seed)


@command("prune", "prune a model with a method and calibration set; prints the variant id")
def _prune(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    from backend.pruning.registry import methods

    parser.add_argument("--method", required=True, choices=list(methods()),
                        help="; ".join(f"{m.name}: {m.description}" for m in methods().values()))
    parser.add_argument("--calibration", default="c4",
                        help="calibration set: c4, wikitext2, ptb, arc_challenge, arc_easy, boolq, rte, "
                             "sst2, wnli, lambada, imdb, or file:PATH (`prunelens datasets` says which "
                             "work offline)")
    parser.add_argument("--sparsity", default=None,
                        help="unstructured: fraction of weights removed, 0 < r < 1 (default 0.5)")
    parser.add_argument("--pattern", default=None,
                        help="N:M semi-structured, e.g. 2:4 = keep 2 of every 4 consecutive weights")
    parser.add_argument("--neuron-ratio", default=None,
                        help="structured methods (mi): fraction of MLP neurons removed, 0 < r < 1")
    parser.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=2048,
                        help="tokens per window, capped at the model's context (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window draw (default 0)")
    option_names = add_option_arguments(parser)
    add_protection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")

    def run(args) -> int:
        from dataclasses import replace

        from backend.pruning.engine import PruneConfig, create_variant

        protect = protection_request_from_args(args)  # checked before any work
        config = PruneConfig(
            method=args.method, calibration=args.calibration, spec=spec_from_args(args),
            nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
            options=options_from_args(args, option_names),
        )
        config.validate()  # before loading the model: bad input costs nothing
        if protect.wanted:
            from backend.config import get_settings
            from backend.models.loader import parse_model_ref
            from backend.pruning.config import require_protection_support

            require_protection_support(config.info)
            # a stored result is read now: an unknown id or another model's result fails here
            protect.from_store(parse_model_ref(args.model or get_settings().default_model).name)
        from backend.models.loader import load_model

        loaded = load_model(args.model)
        if protect.wanted:
            config = replace(config, protection=protect.resolve(loaded))
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
            if manifest.get("dropped_blocks") is not None:
                print(f"dropped decoder blocks {manifest['dropped_blocks']}: {manifest['layers']['dense']} -> "
                      f"{manifest['layers']['kept']} layers")
                return 0
            print(f"achieved sparsity {manifest['achieved_sparsity']['overall']:.4f} "
                  f"(target {config.spec.target_sparsity:.4f}) over "
                  f"{len(manifest['achieved_sparsity']['per_linear'])} linear layers")
            protection = manifest.get("protection")
            if protection:
                print(f"protected {protection['count']} neurons ({protection['mode']}, "
                      f"{protection['source'].get('kind')}); protected weights pruned: "
                      f"{protection['protected_weights_pruned']} of {protection['protected_weights']}")
        return 0

    return run


@command("methods", "list the registered pruning methods and their options")
def _methods(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true")

    def run(args) -> int:
        from backend.pruning.registry import methods

        described = [method.describe() for method in methods().values()]
        if args.json:
            print(json.dumps(described, indent=2))
            return 0
        for method in described:
            kind = "structured (neurons)" if method["structured"] else "weights"
            print(f"{method['name']}\t{kind}\t{method['description']}")
            for name, schema in method["options"].get("properties", {}).items():
                print(f"    --{name.replace('_', '-')}\t{schema.get('description', '')} "
                      f"(default {schema.get('default')})")
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
                  f"{row['sparsity']}\tachieved {row['achieved_sparsity']['overall']:.4f}"
                  f"{chr(9) + 'stale (other code version; a new prune recomputes)' if row['stale'] else ''}")
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
