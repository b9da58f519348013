"""The benchmark protocol that cannot flatter a method: in-domain AND out-of-domain held-out text.

Calibration on one corpus (LAMBADA's calibration passages: novels); held-out perplexity on that
corpus's held-out passages (in domain) and on two corpora the calibration never sees (out of
domain): IMDB movie reviews and BoolQ's Wikipedia passages with their questions, both from the
offline sets (backend/data). Each out-of-domain set is a fixed slice of its documents written as
a ``file:`` text set into the benchmark's scratch folder, so the project's own ``perplexity``
windows it (consecutive non-overlapping windows from the first token). Two calibration budgets
(``BUDGETS`` windows) and two calibration draws (``SEEDS``) per cell, so a claim can name the
budget, the draw and the domain where it holds. Used by bench/structured.py; bench/peer.py and
the method benches can call ``held_out_sets`` and ``measure`` the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

BUDGETS = (16, 128)  # calibration windows: a small budget and the CLI's default
SEEDS = (0, 1)  # calibration draws
IN_DOMAIN = "lambada"  # calibration corpus; its held-out passages are disjoint from calibration
# Documents of each out-of-domain set used as held-out text: the first ones, in the set's order.
OUT_OF_DOMAIN_DOCUMENTS = 200


def held_out_sets(scratch: Path) -> dict[str, str]:
    """Label -> text set for ``perplexity``: the in-domain set first, then the out-of-domain ones."""
    from backend.data import offline_sets

    texts = {"imdb": [example["text"] for example in offline_sets.imdb_examples()],
             "boolq": [example["text"] for example in offline_sets.boolq_examples()]}
    sets = {f"{IN_DOMAIN} (in domain)": IN_DOMAIN}
    for label, documents in texts.items():
        path = scratch / f"heldout-{label}.jsonl"
        lines = (json.dumps({"text": text}) for text in documents[:OUT_OF_DOMAIN_DOCUMENTS])
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        sets[label] = f"file:{path}"
    return sets


def measure(loaded, sets: dict[str, str], *, seqlen: int, windows: int) -> dict[str, float]:
    """Held-out perplexity of the model as it is now on every set: label -> perplexity."""
    from backend.evaluation.perplexity import perplexity

    return {label: perplexity(loaded, text_set, seqlen=seqlen, max_windows=windows)["perplexity"]
            for label, text_set in sets.items()}


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """Rows of dicts -> a markdown table of ``columns`` (floats with 2 decimals)."""
    def cell(value) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines)
