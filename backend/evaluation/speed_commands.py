"""``prunelens speed VARIANT``: what a variant buys in latency, throughput and memory, measured."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from backend.commands import command, print_result


def speed_lines(result: dict) -> Iterator[str]:
    yield (f"{result['variant_id']} ({result['method']}, {result['sparsity']}) vs dense on {result['device']} "
           f"{result['dtype']}, {result['threads']} threads, {result['batch']}x{result['seqlen']} tokens, "
           f"{result['repeats']} interleaved repeats")
    yield "model\tms/forward\ttokens/s\tspeed-up [range]\tparameters\tnonzero\tpeak memory"
    for name, row in result["models"].items():
        speedup = ("1 (reference)" if name == "dense" else
                   f"{row['speedup']:.3f} [{row['speedup_range'][0]:.3f}, {row['speedup_range'][1]:.3f}]")
        peak = f"{row['peak_memory_bytes'] / 2**20:.0f} MiB" if row["peak_memory_bytes"] is not None else "-"
        yield (f"{name}\t{row['seconds_median'] * 1000:.1f}\t{row['tokens_per_second']:.0f}\t{speedup}\t"
               f"{row['parameters']}\t{row['nonzero_parameters']}\t{peak}")
    yield f"what to expect: {result['expectation']}"
    for note in result["notes"]:
        yield f"note: {note}"


@command("speed", "measure a variant's forward latency, throughput and memory against its dense model")
def _speed(parser: argparse.ArgumentParser):
    from backend.evaluation.speed import SpeedSettings

    defaults = SpeedSettings()
    parser.add_argument("variant", help="a variant id (`prunelens variants`)")
    parser.add_argument("--batch", type=int, default=defaults.batch, help=f"sequences per forward ({defaults.batch})")
    parser.add_argument("--seqlen", type=int, default=defaults.seqlen, help=f"tokens per sequence ({defaults.seqlen})")
    parser.add_argument("--repeats", type=int, default=defaults.repeats,
                        help=f"interleaved timed repeats; the median ratio is reported ({defaults.repeats})")
    parser.add_argument("--warmup", type=int, default=defaults.warmup,
                        help=f"untimed repeats first ({defaults.warmup})")
    parser.add_argument("--json", action="store_true", help="print the measurement as JSON ('speedup' = dense/variant)")

    def run(args) -> int:
        from backend.evaluation.speed import measure_speed
        from backend.models.loader import load_model
        from backend.pruning.variants import read_manifest, validate_variant_id

        speed = SpeedSettings(batch=args.batch, seqlen=args.seqlen, repeats=args.repeats, warmup=args.warmup).check()
        manifest = read_manifest(validate_variant_id(args.variant))  # unknown variant: before loading
        loaded = load_model(manifest["base_model"])
        result = measure_speed(loaded, args.variant, speed)
        return print_result(result, args.json, speed_lines)

    return run
