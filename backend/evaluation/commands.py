"""CLI commands for evaluation: ``prunelens tasks | evaluate | table | sweep``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator

from backend.commands import command, print_listing, print_result
from backend.errors import UserError
from backend.storage import write_text_atomic


def _data_files(pairs: list[str] | None) -> dict[str, str]:
    """--data TASK=PATH (repeatable) -> {task: path}."""
    files: dict[str, str] = {}
    for pair in pairs or []:
        task, sep, path = pair.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise UserError(f"--data expects TASK=PATH, got {pair!r}")
        files[task.strip()] = path.strip()
    return files


@command("tasks", "list the evaluation tasks, their category and whether each works offline")
def _tasks(parser: argparse.ArgumentParser):
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")

    def run(args) -> int:
        from backend.evaluation.registry import CATEGORIES, list_tasks

        def lines(rows: list[dict]) -> Iterator[str]:
            for key, title in CATEGORIES.items():
                yield f"{title}:"
                for row in (r for r in rows if r["category"] == key):
                    where = "offline" if row["offline"] else "user file" if row["user_data"] else "hub only"
                    yield f"  {row['name']:<14}{where:<10} {row['source']}"

        return print_listing(list_tasks(), args.json, lines)

    return run


@command("evaluate", "evaluate a model or variant on tasks with lm-evaluation-harness; stores results")
def _evaluate(parser: argparse.ArgumentParser):
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--variant", default=None, help="a variant id (default: the dense model)")
    parser.add_argument("--tasks", required=True,
                        help="comma-separated task names, a category (sentiment, qa, similarity, "
                             "reasoning), 'offline' or 'all' (see `prunelens tasks`)")
    parser.add_argument("--limit", type=int, default=None,
                        help="N examples of each task, drawn at random with --sample-seed")
    parser.add_argument("--sample-seed", type=int, default=None,
                        help="which examples --limit draws (default 1234; the same for every model, "
                             "so dense and variants pair up)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--data", action="append", metavar="TASK=PATH",
                        help="read a task's evaluation split from a local file (repeatable); "
                             "MedNLI needs it (or PRUNELENS_MEDNLI_PATH)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")

    def run(args) -> int:
        from backend.evaluation.registry import choose_sources, parse_task_names

        names = parse_task_names(args.tasks)
        data_files = _data_files(args.data)
        choose_sources(names, data_files=data_files)  # bad tasks or files before loading a model
        if args.limit is not None and args.limit < 1:
            raise UserError("--limit must be at least 1")
        if args.sample_seed is not None and args.sample_seed < 0:
            raise UserError("--sample-seed must be 0 or more")
        model = args.model
        if args.variant:
            from backend.pruning.variants import read_manifest, validate_variant_id

            manifest = read_manifest(validate_variant_id(args.variant))
            if model and model != manifest["base_model"]:
                raise UserError(f"variant {args.variant} belongs to {manifest['base_model']}, not {model}")
            model = manifest["base_model"]

        from backend.evaluation.runner import DEFAULT_SAMPLE_SEED, evaluate
        from backend.models.loader import load_model

        loaded = load_model(model)
        seed = DEFAULT_SAMPLE_SEED if args.sample_seed is None else args.sample_seed
        results = evaluate(loaded, names, variant_id=args.variant, limit=args.limit,
                           batch_size=args.batch_size, data_files=data_files, sample_seed=seed)
        rows = [r.stored.to_json() | {"reused": r.reused} for r in results]
        return print_listing(rows, args.json, lambda _rows: (result.summary_line() for result in results))

    return run


@command("table", "accuracy tables of the paper from stored results (Markdown or CSV)")
def _table(parser: argparse.ArgumentParser):
    parser.add_argument("kind", help="task-calibration | model-calibration (with --task) | task-sparsity | "
                                     "task-seqlen | method-calibration | category-calibration")
    parser.add_argument("--metric", default="acc,none", help="an lm-eval metric key (default acc,none)")
    parser.add_argument("--model", default=None, help="only this base model")
    parser.add_argument("--task", default=None, help="only this task (required by model-calibration)")
    parser.add_argument("--method", default=None)
    parser.add_argument("--calibration", default=None)
    parser.add_argument("--sparsity", default=None, help="a sparsity label: 0.5, 2:4, neurons:0.2")
    parser.add_argument("--seqlen", default=None)
    parser.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    parser.add_argument("--output", default=None, help="write to this file instead of printing")

    def run(args) -> int:
        from backend.evaluation.store import ResultsStore
        from backend.evaluation.tables import build_table

        model = args.model
        if model:  # stored under the loader's canonical name (local folders: absolute paths)
            from backend.models.loader import parse_model_ref

            try:
                model = parse_model_ref(model).name
            except UserError:
                pass  # a model of another machine's store: match the name as given
        store = ResultsStore.from_settings()
        table = build_table(args.kind, store.results(), metric=args.metric,
                            model=model, task=args.task, method=args.method, calibration=args.calibration,
                            sparsity=args.sparsity, seqlen=args.seqlen, outcomes=store.outcomes)
        if not table.rows:
            print(f"no stored results for table {args.kind} with these filters "
                  f"(run `prunelens evaluate` or `prunelens sweep` first)", file=sys.stderr)
        text = {"markdown": table.to_markdown, "csv": table.to_csv,
                "json": lambda: json.dumps(table.to_json(), indent=2) + "\n"}[args.format]()
        if args.output:
            write_text_atomic(args.output, text)
        else:
            sys.stdout.write(text)
        return 0

    return run


@command("sweep", "prune and evaluate a grid from a YAML spec, locally or on Ray; resumable")
def _sweep(parser: argparse.ArgumentParser):
    parser.add_argument("spec", help="sweep spec YAML (models, methods, calibrations, sparsities, "
                                     "seqlens, tasks, limit, nsamples, seed, dense, batch_size, name)")
    parser.add_argument("--ray-address", default=None,
                        help="run cells as Ray tasks: a cluster address, 'auto', or 'local'")
    parser.add_argument("--json", action="store_true", help="print the sweep report as JSON")

    def run(args) -> int:
        from backend.evaluation.sweep import load_sweep_spec, run_sweep, sweep_cells

        spec = load_sweep_spec(args.spec)
        print(f"sweep {spec.name}: {len(sweep_cells(spec))} cells x {len(spec.tasks)} tasks", file=sys.stderr)
        report = run_sweep(spec, ray_address=args.ray_address, show_bar=True)
        def lines(_report: dict) -> Iterator[str]:
            computed = sum(o.computed for o in report.outcomes)
            yield (f"sweep {spec.name}: {report.cells} cells, {report.skipped} complete before, "
                   f"{len(report.outcomes) - len(report.failed)} done now ({computed} task results computed), "
                   f"{len(report.failed)} failed")
            for outcome in report.failed:
                yield f"failed\t{outcome.cell}\t{outcome.error}"

        print_result(report.to_json(), args.json, lines)
        return 1 if report.failed else 0

    return run
