"""The report folder of a study run: report.md, a self-contained report.html, the cells and test
rows as CSV, the exact configuration (config.yaml), the code version, and everything as JSON.

The folder is written in a staging folder beside its target and renamed into place, so a report
is either complete or absent.
"""

from __future__ import annotations

import csv
import html
import io
import json
import subprocess
from pathlib import Path

from backend.errors import UserError
from backend.storage import atomic_directory
from backend.studies.spec import ResolvedStudy


def code_version() -> dict:
    """The git commit (when run from a checkout) and the digests that key stored results."""
    from backend.evaluation.code_version import evaluation_code_version
    from backend.nsa.results_store import nsa_code_version
    from backend.source_digest import files_digest

    package = Path(__file__).resolve().parent
    version: dict[str, str | bool | None] = {
        "evaluation_code": evaluation_code_version(), "nsa_code": nsa_code_version(),
               "studies_code": files_digest(sorted(package.glob("*.py")), package)[:16], "git_commit": None,
               "git_dirty": None}
    try:
        root = package.parent.parent
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
        version |= {"git_commit": commit, "git_dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        pass  # an installed wheel: the digests above still name the code
    return version


def _pts(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def _estimate(claim: dict) -> str:
    estimate = claim.get("estimate")
    if not estimate or estimate.get("value") is None:
        return "n/a"
    interval = "" if estimate.get("low") is None else f" [{_pts(estimate['low'])}, {_pts(estimate['high'])}]"
    return f"{_pts(estimate['value'])}{interval} ({estimate['unit']})"


def _detectable(claim: dict) -> str:
    detectable = claim.get("detectable")
    if not detectable or detectable.get("value") is None:
        return "n/a"
    return f"{_pts(detectable['value'])} ({detectable['unit']}; {detectable.get('note', '')})"


def _claim_rows(result: dict) -> list[list[str]]:
    return [[claim["id"], claim["title"], claim["paper"], _estimate(claim), _detectable(claim), claim["verdict"]]
            for claim in result["claims"]]


_CLAIM_HEADER = ["claim", "what", "paper", "ours (95% interval)", "minimum detectable", "verdict"]
_CHANCE_HEADER = ["task", "n", "dense accuracy [95%]", "majority baseline", "balanced accuracy",
                  "predicted shares", "p (> baseline)", "status"]


def _chance_rows(result: dict) -> list[list[str]]:
    rows = []
    for row in result["chance"]:
        if "accuracy" not in row:
            rows.append([row["task"], "", "", "", "", "", "", row["status"]])
            continue
        shares = row.get("prediction_shares")
        rows.append([row["task"], str(row["n"]), f"{_pts(row['accuracy'])} [{_pts(row['low'])}, {_pts(row['high'])}]",
                     _pts(row["majority_baseline"]), _pts(row.get("balanced_accuracy")),
                     ", ".join(f"{k} {_pts(v)}" for k, v in shares.items()) if shares else "n/a",
                     f"{row['p_value']:.3g}", row["status"]])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def clean(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(clean(cell) for cell in row) + " |" for row in rows)]


def markdown(result: dict, version: dict) -> str:
    lines = [f"# Study {result['study']} (profile {result['profile']})", ""]
    if result.get("paper"):
        lines += [f"Paper: {result['paper']}", ""]
    settings = result["settings"]
    lines += [(f"Model `{settings['model']}`, {settings['limit'] or 'all'} seeded examples per task, "
              f"{settings['nsamples']} calibration windows, seed {settings['seed']}, alpha {settings['alpha']} "
              f"(Holm within a claim), {settings['resamples']} resamples. Took {result['seconds']} s. "
              f"Code: git {version.get('git_commit') or 'n/a'}{' (dirty)' if version.get('git_dirty') else ''}, "
              f"evaluation {version['evaluation_code']}, NSA {version['nsa_code']}."), "", "## Claims", ""]
    lines += _md_table(_CLAIM_HEADER, _claim_rows(result))
    lines += ["", "## Dense model against chance", "",
              ("Tasks where the dense model is not better than always answering the majority label "
              "(one-sided binomial test) are uninformative for this model and left out of every claim."), ""]
    lines += _md_table(_CHANCE_HEADER, _chance_rows(result))
    for claim in result["claims"]:
        lines += ["", f"## {claim['id']}: {claim['title']} ({claim['source']})", "",
                  f"- Paper: {claim['paper']}", f"- Ours: {claim['ours'] or 'n/a'}",
                  f"- Verdict: **{claim['verdict']}**: {claim['why']}"]
        lines += [f"- Note: {note}" for note in claim["notes"]]
        if claim["nsa_results"]:
            lines.append(f"- NSA results: {', '.join(claim['nsa_results'])}")
    return "\n".join(lines) + "\n"


_STYLE = ("body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
          "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .5rem;"
          "vertical-align:top;font-size:.9rem}th{background:#f3f3f3}.replicated{background:#dff0d8}"
          ".contradicted{background:#f2dede}.not-run{background:#eee;color:#666}")


def _html_table(header: list[str], rows: list[list[str]], verdict_column: int | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        css = f' class="{row[verdict_column].replace(" ", "-")}"' if verdict_column is not None else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def html_page(result: dict, version: dict) -> str:
    """One file, no external assets: the same content as report.md."""
    parts = [f"<h1>Study {html.escape(result['study'])} (profile {html.escape(result['profile'])})</h1>",
             f"<p>{html.escape(result.get('paper') or '')}</p>",
             (f"<p>Model <code>{html.escape(result['settings']['model'])}</code>; took {result['seconds']} s; "
             f"git {html.escape(str(version.get('git_commit')))}.</p>"),
             "<h2>Claims</h2>", _html_table(_CLAIM_HEADER, _claim_rows(result), verdict_column=5),
             "<h2>Dense model against chance</h2>", _html_table(_CHANCE_HEADER, _chance_rows(result))]
    for claim in result["claims"]:
        items = [f"Paper: {claim['paper']}", f"Ours: {claim['ours'] or 'n/a'}",
                 f"Verdict: {claim['verdict']}: {claim['why']}", *(f"Note: {n}" for n in claim["notes"])]
        parts.append(f"<h2>{html.escape(claim['id'])}: {html.escape(claim['title'])}</h2><ul>"
                     + "".join(f"<li>{html.escape(item)}</li>" for item in items) + "</ul>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(result['study'])}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def cells_csv(result: dict) -> str:
    rows = [[claim["id"], cell["cell"], cell["status"], cell.get("variant_id") or "", cell.get("error") or ""]
            for claim in result["claims"] for cell in claim["cells"]]
    return _csv(["claim", "cell", "status", "variant_id", "error"], rows)


def tests_csv(result: dict) -> str:
    fields = ["level", "name", "category", "p_value", "p_holm", "spread", "low", "high", "difference", "slope", "n"]
    rows = [[claim["id"], *(row.get(field, "") for field in fields)] for claim in result["claims"]
            for row in claim["rows"]]
    return _csv(["claim", *fields], rows)


def write_report(result: dict, study: ResolvedStudy, target: Path) -> Path:
    """Write the report folder at ``target`` (which must not exist yet)."""
    import yaml

    target = Path(target).expanduser()
    if target.exists():
        raise UserError(f"{target} already exists: choose another --out")
    version = code_version()
    with atomic_directory(target) as staging:
        (staging / "report.md").write_text(markdown(result, version), encoding="utf-8")
        (staging / "report.html").write_text(html_page(result, version), encoding="utf-8")
        (staging / "cells.csv").write_text(cells_csv(result), encoding="utf-8")
        (staging / "tests.csv").write_text(tests_csv(result), encoding="utf-8")
        (staging / "config.yaml").write_text(yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False),
                                             encoding="utf-8")
        (staging / "version.json").write_text(json.dumps(version, indent=2), encoding="utf-8")
        (staging / "study.json").write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    return target
