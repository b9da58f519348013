"""A sweep's cells as Ray tasks: one CPU slot each (one GPU where the cluster has GPUs).

Workers write their results straight into the results store named by the driver (its path made
absolute and passed in the task's environment), so on a multi-node cluster the cache and the
results must be on shared storage. A cell whose worker process dies (killed, out of memory) is
run again by Ray, once; nothing is stored twice because a result is inserted under its key only
once (``ResultsStore.put``) and a variant folder appears by an atomic rename.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

from backend.evaluation.sweep import CellOutcome, Progress, SweepCell, SweepSpec, _one_line, run_cell
from backend.ray_connect import connect_ray

# Reruns of a cell whose worker died; a cell that fails by itself is recorded, not rerun.
MAX_RETRIES = 1
# Test-only fault injection: a folder; the first pruned cell with a task result in the store while the
# folder has no "killed" file creates it (with its pid) and SIGKILLs its own worker process. It
# dies mid-cell at the worst moment: its variant written and a result stored, its outcome not
# yet returned, so the rerun must reuse both rather than store them again.
KILL_ONCE_ENV = "PRUNELENS_TEST_KILL_CELL_ONCE"


def worker_environment() -> dict[str, str]:
    """backend.process_setup's settings and the driver's PRUNELENS_* ones, paths made absolute."""
    from backend.config import get_settings
    from backend.evaluation.settings import evaluation_settings
    from backend.evaluation.store import database_path
    from backend.process_setup import PROCESS_ENVIRONMENT

    environment = {key: os.environ.get(key, value) for key, value in PROCESS_ENVIRONMENT.items()}
    environment |= {key: value for key, value in os.environ.items() if key.startswith("PRUNELENS_")}
    environment["PRUNELENS_CACHE_DIR"] = str(get_settings().cache_dir.resolve())
    environment["PRUNELENS_RESULTS_URL"] = str(database_path(evaluation_settings().results_location).resolve())
    return environment


def _kill_once_progress(folder: Path) -> Progress:
    def progress(fraction: float, _message: str) -> None:
        if fraction <= 0:
            return  # no result of this cell is stored yet: die mid-cell, not before its evaluation
        try:
            marker = os.open(folder / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(marker, str(os.getpid()).encode())
        os.close(marker)
        os.kill(os.getpid(), signal.SIGKILL)

    return progress


def run_cell_on_worker(cell: SweepCell, spec: SweepSpec) -> CellOutcome:
    """``run_cell`` in a Ray worker, its outcome marked with the node and process that ran it."""
    import ray

    fault = os.environ.get(KILL_ONCE_ENV)
    progress = _kill_once_progress(Path(fault)) if fault and cell.method is not None else None
    outcome = run_cell(cell, spec, progress)
    outcome.worker = {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}
    return outcome


def run_cells_on_ray(cells: list[SweepCell], spec: SweepSpec, address: str,
                     record: Callable[[CellOutcome], None]) -> None:
    """Run ``cells`` as Ray tasks; ``record`` each outcome as it arrives (in the driver)."""
    started_here = connect_ray(address)
    import ray

    try:
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        # Workers start with the driver's settings in their environment (Ray's runtime_env). SPREAD:
        # a cell is minutes of work, so cells go to every node rather than queue on the driver's.
        remote_cell = ray.remote(run_cell_on_worker).options(
            num_cpus=1, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False, scheduling_strategy="SPREAD",
            runtime_env={"env_vars": worker_environment()},
        )
        pending = {remote_cell.remote(cell, spec): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died past its retries, a node lost
                outcome = CellOutcome(cell.key, "failed", error=f"Ray task failed: {_one_line(exc)}")
            record(outcome)
    finally:
        if started_here:
            ray.shutdown()
