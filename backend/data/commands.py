"""``prunelens datasets``: list the named text sets, or show what one of them holds."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from backend.commands import command, print_listing, print_result


@command("datasets", "list the named text sets for calibration, perplexity and NSA")
def _datasets(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--show",
        metavar="NAME",
        default=None,
        help="load one set (a name or file:PATH) and print its size and first document",
    )
    parser.add_argument(
        "--split",
        default="calibration",
        choices=("calibration", "heldout"),
        help="the split --show loads (default: calibration)",
    )

    def run(args) -> int:
        from backend.data.sources import list_text_sets, load_corpus

        if args.show:
            corpus = load_corpus(args.show, args.split)
            first = next((text for text in corpus.documents if text and text.strip()), "")
            summary = {
                "name": args.show,
                "split": args.split,
                "documents": len(corpus),
                "bytes": int(corpus.byte_lengths.sum()),
                "first_document": first,
            }
            return print_result(summary, args.json, lambda shown: (
                f"{shown['name']} {shown['split']}: {shown['documents']} documents, {shown['bytes']} bytes",
                shown["first_document"][:500]))
        def lines(rows: list[dict]) -> Iterator[str]:
            for row in rows:
                where = "offline" if row["offline"] else "hub"
                labelled = row["labelled_splits"]
                labels = f"\tlabelled: {','.join(labelled)}" if labelled else ""
                yield f"{row['name']}\t{where}\t{','.join(row['splits'])}{labels}"

        return print_listing(list_text_sets(), args.json, lines)

    return run
