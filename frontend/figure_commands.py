"""CLI command ``prunelens figure RESULT_ID --neuron L:J --out fig.pdf``: a paper-ready figure
(SVG or PDF, by the file's suffix) of a stored NSA result, for scripts.

The result is read from the local cache's NSA store (the one ``prunelens serve`` writes), or,
with ``--backend URL``, from a running backend over HTTP.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from backend.commands import command
from backend.errors import UserError


def parse_neuron(text: str) -> tuple[int, int]:
    """``"12:345"`` -> (layer 12, neuron 345)."""
    layer, sep, index = text.partition(":")
    if not sep or not layer.strip().isdigit() or not index.strip().isdigit():
        raise UserError(f"--neuron {text!r}: expected LAYER:INDEX, e.g. 12:345")
    return int(layer), int(index)


def load_result(result_id: str, backend_url: str | None) -> dict:
    """The NSA result (not its envelope) from a backend or the local cache."""
    if backend_url:
        from frontend.client import BackendClient, BackendError

        try:
            return BackendClient(backend_url).nsa_result(result_id)["result"]
        except BackendError as exc:
            raise UserError(f"NSA result {result_id}: {exc}") from exc
    from backend.api.settings import api_settings
    from backend.nsa.results_store import NsaResultStore

    body = NsaResultStore(api_settings().nsa_db).get_bytes(result_id)
    if body is None:
        raise UserError(f"unknown NSA result {result_id!r} in the local cache (see GET /nsa, or give --backend URL)")
    return json.loads(body)["result"]


def result_figure(result: dict, *, neuron: tuple[int, int] | None, text_index: int,
                  variants: list[str] | None, loss_variant: str | None):
    """The figure the options ask for: a neuron's heatmap, or where activation was lost."""
    from frontend.views import static_figures

    if loss_variant is not None:
        figure = static_figures.activation_loss_for_variant(result, loss_variant)
        if figure is None:
            raise UserError(f"variant {loss_variant!r} is not in this NSA result")
        return figure
    if neuron is None:
        raise UserError("give --neuron LAYER:INDEX (a heatmap) or --loss VARIANT")
    figure = static_figures.neuron_heatmap_static(result, text_index, *neuron, variants)
    if figure is None:
        raise UserError(f"neuron {neuron[0]}:{neuron[1]} on text {text_index} is not recorded in this "
                        "result (only its selected neurons are)")
    return figure


@command("figure", "write an SVG or PDF figure of a stored NSA result (a neuron's heatmap, or "
                   "where a variant lost activation)")
def _figure(parser: argparse.ArgumentParser):
    parser.add_argument("result", help="NSA result id (the dashboard's link or GET /nsa)")
    parser.add_argument("--neuron", default=None, help="LAYER:INDEX of the neuron whose heatmap to draw")
    parser.add_argument("--text", type=int, default=0, help="which text of the result (default 0)")
    parser.add_argument("--variants", default=None, help="comma-separated variant ids to show (default all)")
    parser.add_argument("--loss", default=None, metavar="VARIANT",
                        help="draw 'where activation was lost' in this variant instead of a heatmap")
    parser.add_argument("--out", required=True, help="output file, .svg or .pdf")
    parser.add_argument("--backend", default=None, help="read the result from this backend URL")

    def run(args) -> int:
        from backend.storage import write_bytes_atomic
        from frontend.views.static_figures import FIGURE_FORMATS, figure_bytes

        out = Path(args.out)
        figure_format = out.suffix.lower().lstrip(".")
        if figure_format not in FIGURE_FORMATS:
            raise UserError(f"--out {args.out}: use a .svg or .pdf file name")
        neuron = parse_neuron(args.neuron) if args.neuron else None
        variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
        result = load_result(args.result, args.backend)
        figure = result_figure(result, neuron=neuron, text_index=args.text, variants=variants,
                               loss_variant=args.loss)
        write_bytes_atomic(out, figure_bytes(figure, figure_format))
        print(f"{figure_format.upper()} -> {out}")
        return 0

    return run

