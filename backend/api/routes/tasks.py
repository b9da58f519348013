"""GET /tasks: the evaluation tasks (lm-eval), with category and whether each works offline."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api.schemas import EvalTaskInfo

router = APIRouter(tags=["tasks"])


@router.get("/tasks", response_model=list[EvalTaskInfo], summary="Evaluation tasks")
async def list_eval_tasks() -> list[dict]:
    from backend.evaluation.registry import list_tasks

    return list_tasks()
