"""CLI command ``prunelens export VARIANT --out DIR [--format hf|compressed-tensors]``."""

from __future__ import annotations

import argparse

from backend.commands import command


@command("export", "write a variant as a standard checkpoint folder (transformers, lm-eval, vLLM)")
def _export(parser: argparse.ArgumentParser):
    parser.add_argument("variant", help="variant id (see `prunelens variants`)")
    parser.add_argument("--out", required=True, help="new folder to create (must not exist)")
    parser.add_argument("--format", dest="export_format", default="hf",
                        choices=("hf", "compressed-tensors"),
                        help="hf: dense safetensors (default); compressed-tensors: pruned linears "
                             "stored as bitmask + kept values")

    def run(args) -> int:
        from backend.export.checkpoint import export_variant
        from backend.pruning.variants import validate_variant_id

        result = export_variant(validate_variant_id(args.variant), args.out,
                                export_format=args.export_format)
        sparsity = "" if result.achieved_sparsity is None else f", achieved sparsity {result.achieved_sparsity:.4f}"
        print(f"{result.variant_id} -> {result.path} ({result.export_format}{sparsity})")
        return 0

    return run
