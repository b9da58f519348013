"""/studies: run a study spec as a job (progress, cancel; resumes from the stores) and read its reports.

The spec comes in the request (YAML text), never as a server path. It is validated before the
job is queued, so a bad spec or profile is a 4xx with one line. The finished job writes the
report folder under ``<cache>/studies/`` (``backend.studies.report``); GET lists and reads them.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import Field

from backend.api.routes.variants import job_accepted
from backend.api.schemas import JobAccepted, Strict
from backend.api.state import ApiState, State
from backend.errors import NotFoundError, UserError
from backend.jobs import Job

router = APIRouter(tags=["studies"])
MAX_SPEC_CHARS = 100_000
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,160}$")
RunId = Annotated[str, Path(pattern=_RUN_ID.pattern, description="A report folder's name, as GET /studies lists it.")]


class StudyRequest(Strict):
    spec: str = Field(min_length=1, max_length=MAX_SPEC_CHARS,
                      description="The study spec as YAML text (e.g. the content of studies/nsa-paper.yaml).")
    profile: str | None = Field(default=None, max_length=64, description="A profile of the spec (quick, ...).")


def _resolved(body: StudyRequest):
    import yaml

    from backend.studies.spec import parse_study, resolve

    try:
        data = yaml.safe_load(body.spec)
    except yaml.YAMLError as exc:
        raise UserError(f"study spec: malformed YAML ({getattr(exc, 'problem', None) or 'cannot parse'})") from None
    return resolve(parse_study(data), body.profile)


def _reports_folder(state: ApiState):
    return state.settings.cache_dir / "studies"


@router.post("/studies", status_code=202, response_model=JobAccepted,
             summary="Run a study (its claims' cells, NSA and tests) as a job; stored cells are reused")
def submit_study(body: StudyRequest, state: State) -> JobAccepted:
    study = _resolved(body)
    return job_accepted(state.jobs.submit("study", {"study": study.model_dump(mode="json")}))


@router.get("/studies", response_model=list[dict[str, Any]],
            summary="Study reports: run id, study, profile, verdict per claim (newest first)")
def list_studies(state: State) -> list[dict]:
    folder = _reports_folder(state)
    rows = []
    for path in sorted(folder.glob("*/study.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        result = json.loads(path.read_text(encoding="utf-8"))
        rows.append({"run": path.parent.name, "study": result["study"], "profile": result["profile"],
                     "seconds": result["seconds"],
                     "verdicts": {claim["id"]: claim["verdict"] for claim in result["claims"]}})
    return rows


@router.get("/studies/{run}", response_model=dict[str, Any],
            summary="One study report: claims (paper, ours with interval, detectable effect, verdict), chance table")
def read_study(run: RunId, state: State) -> dict:
    path = _reports_folder(state) / run / "study.json"
    if not _RUN_ID.match(run) or not path.is_file():
        raise NotFoundError(f"unknown study report {run!r}")
    return json.loads(path.read_text(encoding="utf-8"))


def register_jobs(state: ApiState) -> None:
    def run_study_job(job: Job, progress) -> dict:
        from backend.studies.report import write_report
        from backend.studies.runner import run_study
        from backend.studies.spec import ResolvedStudy

        study = ResolvedStudy.model_validate(job.params["study"])
        with state.gate.hold(f"study job {job.id[:8]}", bounded=False):
            result = run_study(study, progress=lambda fraction, message: progress(min(fraction, 0.99), message))
        run = f"{study.name}-{study.profile}-{job.id[:12]}"
        write_report(result, study, _reports_folder(state) / run)
        return {"run": run, "verdicts": {claim["id"]: claim["verdict"] for claim in result["claims"]}}

    state.jobs.register("study", run_study_job)
