"""Guided pruning from the command line: ``prunelens experiment protect | show | list`` (the
protected-neurons experiment) and ``prunelens calibration-advice``."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator

from backend.commands import (
    add_model_arguments,
    command,
    given_arguments,
    print_listing,
    print_result,
)
from backend.errors import UserError
from backend.pruning.options import CalibrationOptions, ProtectOptions

# Prune-request fields -> the experiment spec's (and its flags') names.
SPEC_OF_FLAG = {"calibration": "calibration", "nsamples": "nsamples", "seqlen": "seqlen", "protect_ratio": "ratio",
                "protect_texts": "texts", "protect_mode": "mode", "protect_factor": "factor"}


def _spec_defaults() -> dict:
    """The experiment's defaults (``ProtectExperimentSpec``), shown in the help of the shared flags."""
    from dataclasses import fields

    from backend.guided.protect_experiment import ProtectExperimentSpec

    defaults = {spec_field.name: spec_field.default for spec_field in fields(ProtectExperimentSpec)}
    return {name: defaults[spec_name] for name, spec_name in SPEC_OF_FLAG.items()}


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@command("experiment", "controlled experiments: `experiment protect` (NSA-protected vs matched-random "
                       "protected vs unprotected pruning), `experiment show ID`, `experiment list`")
def _experiment(parser: argparse.ArgumentParser):
    actions = parser.add_subparsers(dest="action", required=True, parser_class=type(parser))
    protect = actions.add_parser("protect", help="run (or resume) the protected-neurons experiment")
    protect.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    protect.add_argument("--task", default="sst2", help="the protected task: sst2 or rte (default sst2)")
    protect.add_argument("--controls", default="rte,arc_easy", help="control tasks (default rte,arc_easy)")
    protect.add_argument("--sparsities", default="0.5", help="comma-separated, e.g. 0.5,2:4 (default 0.5)")
    protect.add_argument("--method", default="wanda", help="magnitude, wanda, ria or sparsegpt (default wanda)")
    protect.add_argument("--limit", type=int, default=200, help="seeded examples per task (default 200)")
    protect.add_argument("--sample-seed", type=int, default=None, help="which examples (default 1234)")
    protect.add_argument("--seed", type=int, default=0, help="selection texts and random draw (default 0)")
    # The calibration and protection flags of `prunelens prune`, declared once (backend.pruning.options),
    # with this experiment's defaults: --calibration, --nsamples, --seqlen, --ratio, --texts, --mode, --factor.
    shared = [*add_model_arguments(protect, CalibrationOptions, only=SPEC_OF_FLAG, defaults=_spec_defaults()),
              *add_model_arguments(protect, ProtectOptions, only=SPEC_OF_FLAG, defaults=_spec_defaults(),
                                   rename=lambda name: SPEC_OF_FLAG[name])]
    protect.add_argument("--batch-size", type=int, default=16)
    protect.add_argument("--json", action="store_true", help="print the document as JSON")
    show = actions.add_parser("show", help="print a stored experiment's table")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--markdown", action="store_true", help="the table in Markdown")
    listing = actions.add_parser("list", help="list the stored experiments")
    listing.add_argument("--json", action="store_true")

    def run(args) -> int:
        from backend.guided.protect_experiment import (
            ProtectExperimentSpec,
            format_table,
            list_experiments,
            markdown_table,
            read_experiment,
            run_experiment,
        )

        if args.action == "list":
            def lines(rows: list[dict]) -> Iterator[str]:
                for row in rows:
                    spec = row["spec"] or {}
                    yield (f"{row['id']}\t{row['status']}\t{spec.get('model')}\t{spec.get('method')} "
                           f"{','.join(spec.get('sparsities', []))}\t{row['updated_at']}")
                if not rows:
                    yield "no experiments yet: run `prunelens experiment protect`"

            return print_listing(list_experiments(), args.json, lines)
        if args.action == "show":
            table = markdown_table if args.markdown else format_table
            return print_result(read_experiment(args.id), args.json, lambda document: [table(document)])
        from backend.config import get_settings
        from backend.evaluation.runner import DEFAULT_SAMPLE_SEED
        from backend.models.loader import parse_model_ref

        model = parse_model_ref(args.model or get_settings().default_model).name
        if args.sample_seed is not None and args.sample_seed < 0:
            raise UserError("--sample-seed must be 0 or more")
        spec = ProtectExperimentSpec(
            model=model, task=args.task, controls=_names(args.controls),
            sparsities=_names(args.sparsities), method=args.method, limit=args.limit,
            sample_seed=DEFAULT_SAMPLE_SEED if args.sample_seed is None else args.sample_seed,
            seed=args.seed, batch_size=args.batch_size,
            **{SPEC_OF_FLAG[name]: value for name, value in given_arguments(args, shared).items()})
        spec.check()  # before loading the model: bad input costs nothing
        from backend.pruning.commands import tqdm_progress

        print(f"experiment {spec.id}", file=sys.stderr)
        bar, update = tqdm_progress("protect experiment")
        try:
            document = run_experiment(spec, progress=update)
        finally:
            bar.close()
        return print_result(document, args.json, lambda shown: [format_table(shown)])

    return run


@command("calibration-advice", "rank calibration sets for a task by a cheap proxy; --validate measures it")
def _calibration_advice(parser: argparse.ArgumentParser):
    parser.add_argument("--task", required=True, help="an evaluation task (e.g. sst2)")
    parser.add_argument("--model", default=None, help="embedded name, hub id or local directory")
    parser.add_argument("--sets", default=None, help="comma-separated calibration sets (default: all offline)")
    parser.add_argument("--task-text", default=None,
                        help="text set (or file:PATH) standing for the task's inputs (default: the set "
                             "named like the task)")
    parser.add_argument("--sparsity", default="0.5")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", action="store_true",
                        help="prune with Wanda on every set, evaluate on the task and correlate")
    parser.add_argument("--limit", type=int, default=200, help="examples per evaluation with --validate")
    parser.add_argument("--json", action="store_true", help="print the advice as JSON")

    def run(args) -> int:
        from backend.guided.advice import (
            AdviceSettings,
            calibration_advice,
            check_request,
            save_advice,
        )

        sets = [name.strip() for name in args.sets.split(",") if name.strip()] if args.sets else None
        task_text, sets = check_request(args.task, sets, args.task_text, args.sparsity, args.nsamples,
                                        args.seqlen)
        if args.limit < 1:
            raise UserError("--limit must be at least 1")
        from backend.models.loader import load_model

        loaded = load_model(args.model)
        settings = AdviceSettings(args.task, task_text, args.sparsity, args.nsamples, args.seqlen, args.seed)
        payload = calibration_advice(loaded, settings, sets, validate=args.validate, limit=args.limit)
        save_advice(payload)
        def lines(payload: dict) -> Iterator[str]:
            yield f"{payload['proxy']}; best first:"
            for row in payload["ranking"]:
                measured = ""
                if "accuracy" in row:
                    low, high = row["interval"] or (math.nan, math.nan)
                    measured = f"\t{args.task} acc {row['accuracy']:.3f} [{low:.3f}, {high:.3f}]"
                yield f"{row['rank']}\t{row['calibration']}\tagreement {row['score']:.4f}{measured}"
            yield payload["reading"]

        return print_result(payload, args.json, lines)

    return run
