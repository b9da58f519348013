"""``prunelens models``: the embedded default and the cached models."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from backend.commands import command, print_listing


@command("models", "list the embedded default and cached models")
def _models(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args) -> int:
        from backend.models.loader import list_models

        def lines(rows: list[dict]) -> Iterator[str]:
            for row in rows:
                state = "ready" if row["converted"] else "converted on first use"
                marker = " (default)" if row["default"] else ""
                yield f"{row['name']}{marker}\t{row['source']}\t{state}"

        return print_listing(list_models(), args.json, lines)

    return run
