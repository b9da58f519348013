"""``prunelens attribute``: Neuron Semantic Attribution from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backend.cli import command, write_json_atomic
from backend.errors import UserError


def read_text_file(path: str) -> list[dict]:
    """A ``.jsonl`` file holds one ``{"text", "label_text"?}`` per line; any other file is one text."""
    source = Path(path)
    if not source.is_file():
        raise UserError(f"{path}: no such file")
    try:
        content = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read it as UTF-8 text") from exc
    if source.suffix != ".jsonl":
        return [{"text": content}]
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{path}:{number}: expected an object with a \"text\" string")
        rows.append(row)
    return rows


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
    if result["ablation"]:
        agg = result["ablation"]["aggregate"]
        lines.append(
            f"ablation: margin change {_num(agg['effect_mean'])} (top neurons) vs "
            f"{_num(agg['random_effect_mean'])} ± {_num(agg['random_effect_std'])} (random)"
        )
    if result.get("causal"):
        from backend.nsa.verdict import verdict_lines

        lines.extend(verdict_lines(result["causal"]))
    return "\n".join(lines)


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
    source.add_argument("--file", help="a text file (one text) or .jsonl ({\"text\", \"label_text\"} per line)")
    source.add_argument("--dataset", help="labelled examples from a dataset, e.g. sst2")
    parser.add_argument("--n", type=int, default=10, help="examples to take with --dataset (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="example sampling and random-neuron seed")
    parser.add_argument("--words", default=None, help="comma-separated influential words (skip step 1)")
    parser.add_argument("--task", default="sentiment",
                        help="sentiment, question_answering, semantic_similarity or logical_reasoning")
    parser.add_argument("--top-k", type=int, default=20, help="neurons to select (default 20)")
    parser.add_argument("--ablate", action="store_true", help="also zero the top neurons vs random ones")
    parser.add_argument("--patch", action="store_true",
                        help="cross-fitted patching: restore the neurons' dense activations in each variant "
                             "(needs --variants and a label per text)")
    parser.add_argument("--explainer-model", default=None, help="another model to answer step 1")
    parser.add_argument("--activation", default="abs", choices=("abs", "positive"),
                        help="A = |a| (default) or max(a, 0)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="step-1 generation length")
    parser.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")

    def run(args) -> int:
        if args.text is not None and not args.text.strip():
            raise UserError("--text is empty")
        if args.patch and not args.variants.strip():
            raise UserError("--patch needs --variants")
        if args.json_out and not Path(args.json_out).resolve().parent.is_dir():
            raise UserError(f"{Path(args.json_out).parent}: folder does not exist")
        if args.dataset:
            from backend.nsa.service import dataset_examples

            texts = dataset_examples(args.dataset, args.n, args.seed)
        elif args.file:
            texts = read_text_file(args.file)
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

            result = attribute(
                loaded, texts, words=args.words, task=args.task, variants=variants, top_k=args.top_k,
                ablate=args.ablate, patch=args.patch, explainer=explainer, activation=args.activation,
                max_new_tokens=args.max_new_tokens, seed=args.seed, progress=progress,
            )
        for warning in result["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        if args.json_out:
            write_json_atomic(args.json_out, result)
        print(_summary(result))
        if args.json_out:
            print(f"-> {args.json_out}")
        return 0

    return run
