"""``prunelens study SPEC.yaml``: run a study's claims and write its report folder."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

from backend.commands import command
from backend.errors import UserError


@command("study", "run a study spec (the paper's claims as grids + tests) and write its report folder")
def _study(parser: argparse.ArgumentParser):
    parser.add_argument("spec", help="study spec (YAML), e.g. studies/nsa-paper.yaml")
    parser.add_argument("--profile", default=None, help="a profile of the spec, e.g. quick, embedded, 7b")
    parser.add_argument("--ray-address", default=None,
                        help="run cells as Ray tasks: local, auto or a cluster address (default: in this process)")
    parser.add_argument("--out", default=None,
                        help="report folder to create (default: studies/<name>-<profile>-<UTC time> in the cache)")
    parser.add_argument("--no-compute", dest="compute", action="store_false",
                        help="judge only what the stores hold already; compute nothing")

    def run(args) -> int:
        from backend.studies.spec import load_study, resolve

        study = resolve(load_study(args.spec), args.profile, Path(args.spec).name)
        if args.out:
            target = Path(args.out).expanduser()
            if target.exists():
                raise UserError(f"{target} already exists: choose another --out")
            if not target.resolve().parent.is_dir():
                raise UserError(f"{target.parent}: folder does not exist")
        else:
            from backend.config import get_settings

            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            target = get_settings().cache_dir / "studies" / f"{study.name}-{study.profile}-{stamp}"

        from tqdm import tqdm

        from backend.studies.report import write_report
        from backend.studies.runner import run_study

        with tqdm(total=100, desc=f"study {study.name}", unit="%", file=sys.stderr, leave=False) as bar:
            def progress(fraction: float, message: str) -> None:
                bar.set_postfix_str(message[:60])
                bar.update(max(round(100 * fraction) - bar.n, 0))

            result = run_study(study, ray_address=args.ray_address, compute=args.compute, progress=progress)
        folder = write_report(result, study, target)
        for claim in result["claims"]:
            print(f"{claim['id']}  {claim['verdict']:<20}  {claim['why']}")
        print(f"-> {folder / 'report.md'} ({result['seconds']} s)")
        return 0

    return run
