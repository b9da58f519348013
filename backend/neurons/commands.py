"""``prunelens index | indexes | neuron | changed``: build and read neuron indexes."""

from __future__ import annotations

import argparse
import json
import re

from backend.commands import command, print_listing
from backend.errors import UserError

_NEURON = re.compile(r"^(\d+):(\d+)$")


def _request_from_args(args: argparse.Namespace):
    from pydantic import ValidationError

    from backend.neurons.request import IndexRequest

    values = {"model": args.model, "variants": [v.strip() for v in (args.variants or "").split(",") if v.strip()],
              "corpus": args.corpus, "tokens": args.tokens, "max_length": args.max_length, "top_k": args.top_k,
              "context": args.context, "seed": args.seed, "batch_tokens": args.batch_tokens}
    try:
        return IndexRequest(**{key: value for key, value in values.items() if value is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UserError(f"--{str(error['loc'][0]).replace('_', '-')}: {error['msg']}") from exc


@command("index", "Build a neuron index: top examples, densities and dense-vs-variant change of every neuron.")
def _index(parser: argparse.ArgumentParser):
    parser.add_argument("--model", help="base model (default: the embedded model)")
    parser.add_argument("--variants", help="comma-separated variant ids of that model")
    parser.add_argument("--corpus", help="'mix' (default), a text set name, or file:PATH")
    parser.add_argument("--tokens", type=int, help="corpus tokens (default 100000)")
    parser.add_argument("--max-length", type=int, help="tokens per document, start token included (default 256)")
    parser.add_argument("--top-k", type=int, help="top examples per neuron and sign (default 20)")
    parser.add_argument("--context", type=int, help="tokens each side of an example (default 8)")
    parser.add_argument("--seed", type=int, help="shuffles the mix corpus (default 0)")
    parser.add_argument("--batch-tokens", type=int, help="padded tokens per forward batch (default 4096)")
    parser.add_argument("--ray-address",
                        help="build as shards on Ray: a cluster address, 'auto', or 'local' "
                        "(the same index, merged exactly)")
    parser.add_argument("--shards", type=int,
                        help="with --ray-address: corpus chunks, one Ray task each (default: 2 per worker slot)")

    def run(args: argparse.Namespace) -> int:
        from tqdm import tqdm

        from backend.neurons.service import build_index, checked_index_id

        request = _request_from_args(args)
        if args.shards is not None and not args.ray_address:
            raise UserError("--shards: only with --ray-address")
        checked_index_id(request)  # bad input: one line before the progress bar appears
        with tqdm(total=1000, desc="index", unit="‰", leave=False) as bar:
            def progress(fraction: float, message: str) -> None:
                bar.n = int(fraction * 1000)
                bar.set_postfix_str(message, refresh=True)

            if args.ray_address:
                from backend.neurons.sharded import build_index_on_ray

                index_id = build_index_on_ray(request, args.ray_address, shards=args.shards, progress=progress)
            else:
                index_id = build_index(request, progress=progress)
        print(index_id)
        return 0

    return run


@command("indexes", "List the neuron indexes (newest first; stale: built by other code).")
def _indexes(parser: argparse.ArgumentParser):
    parser.add_argument("--model", help="only indexes of this model")
    parser.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from backend.neurons.store import list_indexes

        def lines(rows):
            if not rows:
                yield "no indexes (build one with `prunelens index`)"
            for row in rows:
                stale = "  stale" if row["stale"] else ""
                variants = ",".join(row["variants"]) or "-"
                yield (f"{row['id']}  {row['model']}  {row['tokens']} tokens  {row['corpus']}  variants {variants}  "
                       f"{row['created']}{stale}")

        return print_listing(list_indexes(args.model), args.json, lines)

    return run


def _parse_neuron(text: str) -> tuple[int, int]:
    match = _NEURON.match(text.strip())
    if not match:
        raise UserError(f"neuron {text!r}: write LAYER:NEURON, e.g. 11:1229")
    return int(match.group(1)), int(match.group(2))


def _example_line(example: dict) -> str:
    focus = example["focus"]
    text = "".join(f"[[{token}]]" if i == focus else token for i, token in enumerate(example["tokens"]))
    return f"  doc {example['document']:>6} pos {example['position']:>4}  {example['activation']:+.4f}  {text!r}"


@command("neuron", "One neuron of an index: statistics and top examples (dense, and a variant).")
def _neuron(parser: argparse.ArgumentParser):
    parser.add_argument("index", help="index id (see `prunelens indexes`)")
    parser.add_argument("neuron", help="LAYER:NEURON, e.g. 11:1229")
    parser.add_argument("--variant", help="a variant of the index, shown next to the dense model")
    parser.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from backend.neurons.queries import neuron_page

        layer, neuron = _parse_neuron(args.neuron)
        page = neuron_page(args.index, layer, neuron, args.variant)
        if args.json:
            print(json.dumps(page, indent=2))
            return 0
        print(f"{page['model']} layer {layer} neuron {neuron}: {page['tokens']} tokens of {page['corpus']}")
        blocks = [("dense", page["dense"])] + ([(page["variant"]["id"], page["variant"])] if page["variant"] else [])
        for name, block in blocks:
            stats = block["stats"]
            print(f"{name}: mean {stats['mean']:+.4f}  mean|a| {stats['mean_abs']:.4f}  std {stats['std']:.4f}  "
                  f"max {stats['max']:+.4f}  min {stats['min']:+.4f}  density {stats['density']:.3f} "
                  f"(|a| >= {stats['density_threshold']})")
            for side in ("top_positive", "top_negative"):
                print(f" {side.replace('_', ' ')}:")
                for example in block[side]:
                    print(_example_line(example))
        if page["variant"]:
            agreement = page["variant"]["agreement"]
            print("agreement: " + "  ".join(f"{key} {value}" for key, value in agreement.items()))
        return 0

    return run


@command("changed", "Neurons a variant changed most, with the split-half chance floor of each.")
def _changed(parser: argparse.ArgumentParser):
    parser.add_argument("index", help="index id (see `prunelens indexes`)")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--layer", type=int)
    parser.add_argument("--order", default="pearson", help="pearson, mass_lost, topk_overlap or profile_correlation")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--exclude-noise", action="store_true", help="drop neurons not distinguishable from noise")
    parser.add_argument("--json", action="store_true")

    def run(args: argparse.Namespace) -> int:
        from backend.neurons.queries import changed_neurons

        rows = changed_neurons(args.index, args.variant, args.layer, args.order, args.limit,
                               include_noise=not args.exclude_noise)

        def fmt(value) -> str:
            return "   n/a" if value is None else f"{value:+.3f}"

        def lines(rows):
            yield "layer neuron pearson mass_lost topk_ovl profile (floor) tokens (floor) noise?"
            for row in rows:
                noise = "not distinguishable" if row["not_distinguishable"] else ""
                yield (f"{row['layer']:>5} {row['neuron']:>6} {fmt(row['pearson'])} {fmt(row['mass_lost'])} "
                       f"{fmt(row['topk_overlap'])} {fmt(row['profile_correlation'])} "
                       f"({fmt(row['profile_correlation_floor'])}) "
                       f"{fmt(row['token_overlap'])} ({fmt(row['token_overlap_floor'])}) {noise}")

        return print_listing(rows, args.json, lines)

    return run
