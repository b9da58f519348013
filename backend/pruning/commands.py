"""CLI commands for pruning: ``prunelens prune | methods | variants | perplexity``.

The ``prune`` arguments for methods and their options are generated from the method registry
(``backend.pruning.registry``): one ``--option`` per option name, validated by the method's
options model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from backend.commands import (
    add_field_argument,
    add_model_arguments,
    command,
    field_help,
    given_arguments,
    print_listing,
    print_result,
    validated_options,
)
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


def prune_request_from_args(args, option_names: list[str]):
    """The ``PruneOptions`` the flags ask for (checked: exit 2 with one line)."""
    from backend.guided.protection_sources import ProtectionRequest
    from backend.pruning.options import ProtectOptions, PruneOptions

    given = given_arguments(args, [name for name in PruneOptions.model_fields if hasattr(args, name)])
    # The protection's own checks first: their messages say what a flag takes ("in (0, 0.5]").
    protect = ProtectOptions.model_construct(**{k: v for k, v in given.items() if k in ProtectOptions.model_fields})
    ProtectionRequest.of(protect)
    return validated_options(PruneOptions, {**given, "options": options_from_args(args, option_names)})


@command("prune", "prune a model with a method and calibration set; prints the variant id")
def _prune(parser: argparse.ArgumentParser):
    from backend.pruning.options import PruneOptions
    from backend.pruning.registry import methods

    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--method", required=True, choices=list(methods()),
                        help="; ".join(f"{m.name}: {m.description}" for m in methods().values()))
    add_model_arguments(parser, PruneOptions, skip=("model", "method", "options"))
    option_names = add_option_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")

    def run(args) -> int:
        from backend.config import get_settings
        from backend.guided.protection_sources import ProtectionRequest
        from backend.models.loader import load_model, parse_model_ref
        from backend.pruning.service import check_prune_request, prune_variant

        request = prune_request_from_args(args, option_names)
        protection = ProtectionRequest.of(request, request.seed)
        # Before loading the model: bad input (or an unknown NSA result to protect) costs nothing.
        config = check_prune_request(request, protection=protection,
                                     model_name=parse_model_ref(args.model or get_settings().default_model).name)
        loaded = load_model(args.model)
        bar, update = tqdm_progress(f"{args.method} {config.spec.label}")
        try:
            result = prune_variant(loaded, request, protection=protection, progress=update)
        finally:
            bar.close()
        def lines(manifest: dict) -> Iterator[str]:
            yield f"{result.variant_id}{' (reused)' if result.reused else ''}"
            if manifest.get("dropped_blocks") is not None:
                yield (f"dropped decoder blocks {manifest['dropped_blocks']}: {manifest['layers']['dense']} -> "
                       f"{manifest['layers']['kept']} layers")
                return
            yield (f"achieved sparsity {manifest['achieved_sparsity']['overall']:.4f} "
                   f"(target {config.spec.target_sparsity:.4f}) over "
                   f"{len(manifest['achieved_sparsity']['per_linear'])} linear layers")
            protection_info = manifest.get("protection")
            if protection_info:
                yield (f"protected {protection_info['count']} neurons ({protection_info['mode']}, "
                       f"{protection_info['source'].get('kind')}); protected weights pruned: "
                       f"{protection_info['protected_weights_pruned']} of {protection_info['protected_weights']}")

        return print_result(result.manifest, args.json, lines)

    return run


@command("methods", "list the registered pruning methods and their options")
def _methods(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true")

    def run(args) -> int:
        from backend.pruning.registry import methods

        def lines(described: list[dict]) -> Iterator[str]:
            for method in described:
                kind = ("structured (neurons)" if method["structured"] else "depth (blocks)" if method.get("depth")
                        else "weights")
                yield f"{method['name']}\t{kind}\t{method['description']}"
                for name, schema in method["options"].get("properties", {}).items():
                    yield (f"    --{name.replace('_', '-')}\t{schema.get('description', '')} "
                           f"(default {schema.get('default')})")

        return print_listing([method.describe() for method in methods().values()], args.json, lines)

    return run


@command("variants", "list pruned variants")
def _variants(parser: argparse.ArgumentParser):
    parser.add_argument("--base", default=None, help="only variants of this base model")
    parser.add_argument("--json", action="store_true")

    def run(args) -> int:
        from backend.pruning.variants import list_variants

        def lines(rows: list[dict]) -> Iterator[str]:
            if not rows:
                yield "no variants yet: create one with `prunelens prune`"
            for row in rows:
                stale = "\tstale (other code version; a new prune recomputes)" if row["stale"] else ""
                yield (f"{row['id']}\t{row['base_model']}\t{row['method']}\t{row['calibration']}\t"
                       f"{row['sparsity']}\tachieved {row['achieved_sparsity']['overall']:.4f}{stale}")

        return print_listing(list_variants(args.base), args.json, lines)

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
