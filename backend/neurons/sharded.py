"""``build_index_on_ray``: a neuron index built as shards (corpus chunks) on a Ray cluster, merged exactly.

Each shard is a contiguous range of corpus documents run through the dense model and every
variant (they share each batch: the KL and the variant's re-read of the dense examples need both
on the same tokens), as one Ray task. The task writes its state as one shard file
(``shard_files``) under the index's shard folder ``<indexes>/.shards-<index id>/``, renamed into
place when complete. The driver then reads the shard files one after the other, merges them with
``merge_states`` (sums, histograms, min/max and top-k under a total order: exact, in any order)
and writes the index as the single-process build does. So the sharded index equals the
single-process one: token counts, histograms and the top-k examples (which document, which
position) exactly; activations and sums to float32 rounding, since another cut of the corpus
batches a document with other neighbours, and other padded shapes move the last bits of a
float32 matmul (as another --batch-tokens does).

Faults: a task whose worker process dies (killed, out of memory, node lost) is rerun by Ray
(``max_retries``); a shard file already present is reused, never computed or counted twice (the
shard plan is written once, so a rerun of the build cuts the corpus the same way). On a cluster
of several machines the cache folder (PRUNELENS_CACHE_DIR) must be shared storage, as for sweeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from backend.errors import UserError
from backend.neurons.accumulators import merge_states
from backend.neurons.build import DENSE, IndexInputs, build_shard
from backend.neurons.request import IndexRequest
from backend.neurons.shard_files import read_shard, read_shard_meta, shard_name, write_shard
from backend.neurons.store import index_dir, index_exists, indexes_root
from backend.ray_connect import connect_ray
from backend.storage import write_json_atomic

Progress = Callable[[float, str], None]
MAX_RETRIES = 3  # reruns of a shard whose worker died
# Test-only fault injection: a folder; the first shard task to reach its second batch while the
# folder has no "killed" file creates it and SIGKILLs its own worker process.
KILL_ONCE_ENV = "PRUNELENS_TEST_KILL_SHARD_ONCE"
SHARDS_RECORD = "shards.json"  # in the finished index: each shard's documents, node and worker


def shards_dir(index_id: str) -> Path:
    """Where the shard files of ``index_id`` wait for the merge (hidden: never listed as an index)."""
    return indexes_root() / f".shards-{index_id}"


def plan_shards(documents: list[list[int]], shards: int) -> list[range]:
    """``shards`` contiguous document ranges with about equal counted tokens (fewer when the corpus
    has fewer documents); ``documents``: token ids per document, start token first."""
    lengths = [len(ids) - 1 for ids in documents]
    total = sum(lengths)
    ranges: list[range] = []
    start, counted = 0, 0
    for number, length in enumerate(lengths):
        counted += length
        if len(ranges) < shards - 1 and counted >= total * (len(ranges) + 1) / shards:
            ranges.append(range(start, number + 1))
            start = number + 1
    if start < len(documents):
        ranges.append(range(start, len(documents)))
    return ranges


def _kill_once_progress(folder: Path) -> Progress:
    def progress(fraction: float, _message: str) -> None:
        if fraction <= 0:
            return  # the first batch has not run yet: die mid-build, not before it
        try:
            marker = os.open(folder / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(marker, str(os.getpid()).encode())
        os.close(marker)
        os.kill(os.getpid(), signal.SIGKILL)

    return progress


def build_shard_file(request_fields: dict, documents: range, path: str, index_id: str) -> dict:
    """The Ray task: the state of ``documents`` written to the shard file ``path`` (reused when
    it exists). Returns the shard's JSON facts (node id, documents, tokens)."""
    import ray

    target = Path(path)
    if target.exists():
        return {**read_shard_meta(target), "reused": True}
    fault = os.environ.get(KILL_ONCE_ENV)
    progress = _kill_once_progress(Path(fault)) if fault else None
    state = build_shard(IndexRequest(**request_fields), documents, progress=progress)
    context = ray.get_runtime_context()
    write_shard(target, state, dense=DENSE, layers=len(state.layers[DENSE]), extra={
        "index_id": index_id, "range": [documents.start, documents.stop], "node_id": context.get_node_id(),
        "worker_pid": os.getpid(), "attempt_task_id": context.get_task_id()})
    return {**read_shard_meta(target), "reused": False}


def _worker_environment() -> dict[str, str]:
    """The driver's process settings and PRUNELENS_* variables, the cache folder made absolute."""
    from backend.config import get_settings
    from backend.process_setup import PROCESS_ENVIRONMENT

    environment = {key: os.environ.get(key, value) for key, value in PROCESS_ENVIRONMENT.items()}
    environment |= {key: value for key, value in os.environ.items() if key.startswith("PRUNELENS_")}
    environment["PRUNELENS_CACHE_DIR"] = str(get_settings().cache_dir.resolve())
    return environment


def _shard_plan(folder: Path, documents: list[list[int]], shards: int) -> list[range]:
    """The plan of an earlier, interrupted build of this index if there is one, else a new one."""
    plan_file = folder / "plan.json"
    if plan_file.is_file():
        return [range(start, stop) for start, stop in json.loads(plan_file.read_text(encoding="utf-8"))["shards"]]
    ranges = plan_shards(documents, shards)
    write_json_atomic(plan_file, {"shards": [[r.start, r.stop] for r in ranges]})
    return ranges


def _run_shards(request: IndexRequest, index_id: str, folder: Path, ranges: list[range],
                report: Progress) -> list[dict]:
    """Every shard of ``ranges`` as a file in ``folder``: those already there are reused, the others
    run as Ray tasks. Returns each shard's JSON facts, in plan order."""
    import ray

    facts: dict[range, dict] = {shard: {**read_shard_meta(folder / shard_name(shard)), "reused": True}
                                for shard in ranges if (folder / shard_name(shard)).is_file()}
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(build_shard_file).options(
        num_cpus=1, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False,
        runtime_env={"env_vars": _worker_environment()})
    pending = {task.remote(request.model_dump(), shard, str(folder / shard_name(shard)), index_id): shard
               for shard in ranges if shard not in facts}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        shard = pending.pop(ready[0])
        try:
            facts[shard] = ray.get(ready[0])
        except Exception as exc:
            for ref in pending:
                ray.cancel(ref)
            line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise UserError(f"shard of documents {shard.start}..{shard.stop - 1} failed: {line}") from exc
        report(0.05 + 0.8 * len(facts) / len(ranges),
               f"shard {len(facts)}/{len(ranges)} on node {facts[shard]['node_id'][:8]}")
    return [facts[shard] for shard in ranges]


def build_index_on_ray(request: IndexRequest, address: str, *, shards: int | None = None,
                       progress: Progress | None = None) -> str:
    """Build (or reuse) the index of ``request`` as shards on the Ray cluster at ``address``;
    returns its id, the same id and the same content as ``service.build_index``."""
    from backend.models.loader import load_model
    from backend.neurons.models import model_name
    from backend.neurons.service import checked_index_id
    from backend.neurons.store import discard_partial
    from backend.neurons.writer import write_index

    report = progress or (lambda _fraction, _message: None)
    if shards is not None and shards < 1:
        raise UserError("--shards: must be at least 1")
    target = checked_index_id(request)
    if index_exists(target):
        report(1.0, f"reused existing index {target}")
        return target
    discard_partial(target)  # an interrupted write of the index itself (the shard folder stays)
    report(0.0, "reading the corpus")
    dense = load_model(model_name(request))
    inputs = IndexInputs.prepare(request, dense)
    started_here = connect_ray(address)
    import ray

    try:
        slots = int(ray.cluster_resources().get("GPU", 0)) or int(ray.cluster_resources().get("CPU", 1))
        folder = shards_dir(target)
        folder.mkdir(parents=True, exist_ok=True)
        ranges = _shard_plan(folder, inputs.corpus.documents, shards or max(1, 2 * slots))
        facts = _run_shards(request, target, folder, ranges, report)
    finally:
        if started_here:
            ray.shutdown()
    report(0.86, f"merging {len(facts)} shards")
    merged = None
    for shard in ranges:  # one shard in memory at a time besides the running merge
        state, meta = read_shard(folder / shard_name(shard))
        expected = [n for n in shard if n < len(inputs.corpus.documents)]
        if meta.get("index_id") != target or meta["documents"] != expected:
            raise UserError(f"{shard_name(shard)}: not a shard of {target}; remove {folder} and build again")
        merged = state if merged is None else merge_states([merged, state])
    assert merged is not None
    if merged.documents != set(range(len(inputs.corpus.documents))):
        raise UserError(f"the shards of {target} do not cover the corpus; remove {folder} and build again")
    merged.timings["shards"] = float(len(ranges))
    write_index(merged, inputs, dense.tokenizer, target)
    # Provenance beside the finished index (the index reads complete without it): where each shard ran.
    write_json_atomic(index_dir(target) / SHARDS_RECORD, {"shards": [
        {key: fact.get(key) for key in ("range", "documents", "tokens", "node_id", "worker_pid", "reused")}
        for fact in facts]})
    shutil.rmtree(folder, ignore_errors=True)
    report(1.0, f"index {target}")
    return target
