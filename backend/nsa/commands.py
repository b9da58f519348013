"""NSA from the command line: ``prunelens attribute``, ``activations`` and ``figure`` (a stored
result drawn as SVG or PDF)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.commands import add_model_arguments, command, given_arguments, parse_int_list
from backend.errors import UserError
from backend.nsa.options import NsaOptions, nsa_options
from backend.storage import write_json_atomic


def file_inputs(path: str) -> tuple[list[dict], list[list[str]] | None]:
    """A user file's texts (with their labels as ``label_text``) and per-text words, if any.

    Read by ``backend.data.user_files``, the reader of the API upload and ``file:`` calibration.
    """
    from backend.data.user_files import read_user_file

    records = read_user_file(path)
    texts = [
        {"text": record["text"], **({"label_text": record["label"]} if "label" in record else {})}
        for record in records
    ]
    has_words = any("words" in record for record in records)
    return texts, [record.get("words", []) for record in records] if has_words else None


def _summary(result: dict) -> str:
    lines = []
    for text in result["texts"]:
        words = ", ".join(w["word"] for w in text["influential"]["words"])
        lines.append(f"text {text['index']}: words [{words}] ({text['influential']['source']})")
    lines.append("rank layer neuron score  top words")
    for neuron in result["neurons"]:
        top = ", ".join(row["word"] for row in neuron["attributed_words"][:3])
        lines.append(f"{neuron['rank']:>4} {neuron['layer']:>5} {neuron['index']:>6} {neuron['score']:.3f}  {top}")
    for block in result["comparison"]:
        agg = block["aggregate"]
        lines.append(
            f"variant {block['variant']}: drop {_pct(agg['drop_influential'])} on influential tokens, "
            f"baseline all neurons {_pct(agg['baseline_all_neurons'])}, "
            f"non-influential tokens {_pct(agg['baseline_non_influential'])}"
        )
        lines.extend(_statistics_lines(block.get("statistics")))
    if result["ablation"]:
        lines.append(f"ablation: {result['ablation']['reading']}")
    if result.get("causal"):
        from backend.nsa.verdict import verdict_lines

        lines.extend(verdict_lines(result["causal"]))
    return "\n".join(lines)


def _statistics_lines(statistics: dict | None) -> list[str]:
    """Held-out first (the headline), then in-sample, each excess with its interval and null."""
    if not statistics:
        return []
    lines = []
    for key, label in (("held_out", "held-out"), ("in_sample", "in-sample")):
        summary = statistics.get(key)
        if summary is None:
            continue
        excess = summary["excess_drop"]
        null = summary["null"]
        chance = "" if null is None else (f"; matched null {_pct(null['mean'])} [{_pct(null['low'])}, "
                                          f"{_pct(null['high'])}], percentile {null['percentile']:.0f}, "
                                          f"p = {null['p_value']:.3f}")
        lines.append(f"  {label} excess drop {_interval(excess)} ({summary['verdict']}){chance}")
    if statistics.get("held_out_note"):
        lines.append(f"  {statistics['held_out_note']}")
    return lines


def _interval(figure: dict) -> str:
    if figure["low"] is None:
        return _pct(figure["mean"])
    return f"{_pct(figure['mean'])} [95% CI {_pct(figure['low'])}, {_pct(figure['high'])}]"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@command("attribute", "Neuron Semantic Attribution: influential words, top neurons, what pruning did to them")
def _attribute(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--variants", default="", help="comma-separated variant ids to compare")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to attribute")
    source.add_argument("--file", help=".txt (paragraphs split on blank lines), .jsonl (\"text\", "
                        "\"label\"?, \"words\"?) or .csv (text, label?, words? columns)")
    source.add_argument("--dataset", help="labelled examples from a dataset, e.g. sst2")
    parser.add_argument("--n", type=int, default=10, help="examples to take with --dataset (default 10)")
    parser.add_argument("--words", default=None, help="comma-separated influential words (skip step 1)")
    parser.add_argument("--explainer-model", default=None, help="another model to answer step 1")
    option_names = add_model_arguments(parser, NsaOptions)
    parser.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")

    def run(args) -> int:
        if args.text is not None and not args.text.strip():
            raise UserError("--text is empty")
        options = nsa_options(**given_arguments(args, option_names))  # checked before any work
        if options.patch and not args.variants.strip():
            raise UserError("--patch needs --variants")
        if args.json_out and not Path(args.json_out).resolve().parent.is_dir():
            raise UserError(f"{Path(args.json_out).parent}: folder does not exist")
        file_words = None
        if args.dataset:
            from backend.nsa.service import dataset_examples

            texts = dataset_examples(args.dataset, args.n, options.seed)
        elif args.file:
            texts, file_words = file_inputs(args.file)
        else:
            texts = [args.text]

        from tqdm import tqdm

        from backend.models.loader import load_model
        from backend.nsa.service import attribute

        loaded = load_model(args.model)
        explainer = load_model(args.explainer_model) if args.explainer_model else None
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        with tqdm(total=100, desc="attribute", unit="%", file=sys.stderr, leave=False) as bar:
            def progress(fraction: float, message: str) -> None:
                bar.set_postfix_str(message)
                bar.update(round(100 * fraction) - bar.n)

            result = attribute(loaded, texts, words=args.words or file_words, variants=variants, options=options,
                               explainer=explainer, progress=progress)
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json_out:
            write_json_atomic(args.json_out, result)
        print(_summary(result))
        if args.json_out:
            print(f"-> {args.json_out}")
        return 0

    return run


@command("activations", "record neuron activations (down-projection inputs) for a text")
def _activations(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--text", required=True, help="the text to run through the model")
    parser.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    parser.add_argument("--json", dest="json_out", required=True, help="output JSON file")

    def run(args) -> int:
        from backend.models.loader import load_model
        from backend.nsa.capture import capture_text

        layers = parse_int_list(args.layers, "--layers") if args.layers else None
        if not args.text.strip():
            raise UserError("--text is empty")
        loaded = load_model(args.model)
        result = capture_text(loaded, args.text, layers)
        if result.truncated:
            print(f"warning: text truncated to the model's context of {loaded.max_length} tokens",
                  file=sys.stderr)
        write_json_atomic(args.json_out, result.to_json())
        print(f"{len(result.tokens)} tokens x {len(result.layers)} layers -> {args.json_out}")
        return 0

    return run


# ----------------------------------------------------------------------------- figure
# A paper-ready figure (SVG or PDF, by the file's suffix) of a stored NSA result, read from the local
# cache's NSA store or, with --backend URL, from a running backend; drawn by the dashboard's own
# figure code (frontend.views.static_figures), so a figure from a script equals the downloaded one.


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
    from backend.config import get_settings
    from backend.nsa.results_store import NsaResultStore

    body = NsaResultStore(get_settings().nsa_db).get_bytes(result_id)
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
