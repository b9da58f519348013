"""The task registry: the 24 tasks, their lm-eval definitions, and the data each one reads."""

from __future__ import annotations

import json

import datasets
import pytest
import yaml

from backend.cli import main
from backend.errors import NotFoundError, UserError
from backend.evaluation.registry import (
    CATEGORIES,
    TASKS,
    choose_source,
    choose_sources,
    derived_config,
    list_tasks,
    parse_task_names,
    prepared_tasks,
)
from backend.evaluation.settings import EvaluationSettings
from backend.evaluation.sources import DataSource, hub_reachable

# The table: category -> datasets, in order.
PAPER_TASKS = {
    "sentiment": ["sst2", "yelp", "imdb", "sentiment140"],
    "qa": ["arc_challenge", "arc_easy", "openbookqa", "pubmedqa", "race", "boolq", "qnli"],
    "similarity": ["mrpc", "qqp", "wic", "scitail", "rte", "mednli", "paws"],
    "reasoning": ["copa", "logiqa", "sciq", "wnli", "winogrande", "wsc273"],
}
OFFLINE = {"sst2", "rte", "mrpc", "boolq", "arc_challenge", "arc_easy", "openbookqa", "sciq",
           "winogrande", "copa", "imdb"}
# Tasks that lm-eval defines, and the name it gives them.
HARNESS_NAMES = {name: name for names in PAPER_TASKS.values() for name in names} | {"paws": "paws_en"}
OWN = {"yelp", "imdb", "sentiment140", "scitail", "mednli"}


def _yaml_task_name(path) -> str:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))
    return yaml.load(path.read_text(), Loader=Loader)["task"]


def test_registry_is_the_papers_24_tasks_in_4_categories():
    assert len(TASKS) == 24
    assert list(CATEGORIES) == list(PAPER_TASKS)
    for category, names in PAPER_TASKS.items():
        assert [t.name for t in TASKS.values() if t.category == category] == names


def test_each_task_uses_lm_evals_own_definition_where_it_has_one():
    for task in TASKS.values():
        path = task.config_path()
        assert path.is_file(), task.name
        if task.name in OWN:
            assert task.config.startswith("own:")
            assert _yaml_task_name(path) == task.name
        else:
            assert task.config.startswith("lm_eval:"), task.name
            assert _yaml_task_name(path) == HARNESS_NAMES[task.name]


def test_offline_tasks_are_the_ones_whose_data_ships_in_wheels():
    assert {t.name for t in TASKS.values() if t.offline} == OFFLINE
    rows = {row["name"]: row for row in list_tasks()}
    assert {name for name, row in rows.items() if row["offline"]} == OFFLINE
    assert rows["mednli"]["user_data"] and not rows["mednli"]["offline"]


def test_parse_task_names_expands_categories_and_rejects_unknown():
    assert parse_task_names("sst2, rte,sst2") == ["sst2", "rte"]
    assert parse_task_names("sentiment") == PAPER_TASKS["sentiment"]
    assert set(parse_task_names("offline")) == OFFLINE
    assert len(parse_task_names("all")) == 24
    with pytest.raises(UserError, match="unknown task 'sst3'"):
        parse_task_names("sst2,sst3")
    with pytest.raises(UserError, match="no tasks"):
        parse_task_names(" , ")


def test_choose_source_order_user_file_packaged_hub(tmp_path):
    auto, hub_mode = EvaluationSettings(eval_data="auto"), EvaluationSettings(eval_data="hub")
    packaged_only = EvaluationSettings(eval_data="packaged")
    assert choose_source(TASKS["sst2"], settings=auto).kind == "packaged"
    assert choose_source(TASKS["sst2"], settings=hub_mode).kind == "hub"
    assert choose_source(TASKS["qqp"], settings=auto).kind == "hub"  # decided without the network
    with pytest.raises(UserError, match="qqp has no packaged data"):
        choose_source(TASKS["qqp"], settings=packaged_only)
    with pytest.raises(UserError, match="PRUNELENS_MEDNLI_PATH"):
        choose_source(TASKS["mednli"], settings=auto)
    data = tmp_path / "rows.jsonl"
    data.write_text('{"sentence": "fine", "label": 1}\n')
    first = choose_source(TASKS["sst2"], data_files={"sst2": str(data)}, settings=auto)
    assert first.kind == "file" and first.identity.startswith("file:")
    data.write_text('{"sentence": "bad", "label": 0}\n')  # new content -> new identity, no stale reuse
    assert choose_source(TASKS["sst2"], data_files={"sst2": str(data)}, settings=auto).identity != first.identity
    with pytest.raises(NotFoundError, match="not found"):
        choose_source(TASKS["sst2"], data_files={"sst2": str(tmp_path / "missing.csv")}, settings=auto)
    with pytest.raises(UserError, match="unknown task"):
        choose_sources(["sst2"], data_files={"nope": str(data)}, settings=auto)


def test_hub_task_offline_is_one_clear_line_at_once(monkeypatch):
    sources = {"qqp": DataSource("hub", None, "hub"), "sst2": DataSource("packaged", "x", "packaged")}
    with pytest.raises(UserError) as error, prepared_tasks(sources, hub_ok=lambda: False):
        pass
    message = str(error.value)
    assert "qqp: nyu-mll/glue (qqp)" in message and "sst2" in message.split("Offline tasks:")[1]
    assert "\n" not in message
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False


def test_derived_config_points_lm_eval_at_the_local_split():
    source = DataSource("packaged", "/data/boolq", "packaged")
    text = derived_config(TASKS["boolq"], source)
    assert "custom_dataset: !function backend.evaluation.sources.task_dataset" in text
    assert '"prunelens_convert": "boolq_to_super_glue"' in text
    hub = derived_config(TASKS["paws"], DataSource("hub", None, "hub"))
    assert hub.splitlines() == [f"include: {json.dumps(str(TASKS['paws'].config_path()))}", 'task: "paws"']


@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_packaged_data_feeds_lm_evals_prompts_unchanged(name):
    """Each offline task's documents, prompt and gold answer, checked against the raw shipped rows."""
    task_info = TASKS[name]
    source = choose_source(task_info, settings=EvaluationSettings(eval_data="packaged"))
    with prepared_tasks({name: source}) as prepared:
        task = prepared.load(name)
        docs = task.eval_docs  # a datasets.Dataset
    assert len(docs) == task_info.packaged.rows
    if name == "imdb":  # shuffled with a fixed seed so that a limit sees both labels
        assert set(docs.select(range(20))["label"]) == {0, 1}
        return
    raw = datasets.load_from_disk(source.path)[0]
    doc = docs[0]
    if name == "sst2":
        assert task.doc_to_text(doc) == f"{raw['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:"
        assert task.doc_to_target(doc) == raw["label"]
    elif name == "boolq":
        assert task.doc_to_text(doc) == f"{raw['passage']}\nQuestion: {raw['question']}?\nAnswer:"
        assert task.doc_to_target(doc) == int(raw["answer"])
    elif name in ("arc_easy", "arc_challenge", "openbookqa"):
        assert task.doc_to_choice(doc) == raw["choices"]["text"]
        assert task.doc_to_target(doc) == raw["choices"]["label"].index(raw["answerKey"].strip())
    elif name == "sciq":
        assert task.doc_to_choice(doc)[task.doc_to_target(doc)] == raw["correct_answer"]
    elif name == "copa":  # lm-eval's copa target is the right choice's text, first letter lowered
        right = raw["choice1"] if raw["label"] == 0 else raw["choice2"]
        assert task.doc_to_target(doc) == " " + right[0].lower() + right[1:]
    elif name == "winogrande":  # partial scoring: the context is the choice, the gold is its index
        assert task.doc_to_text(doc) == int(raw["answer"]) - 1
        blank = raw["sentence"].index("_")
        assert task.doc_to_choice(doc)[1] == raw["sentence"][:blank] + raw["option2"]
    else:  # rte, mrpc: the glue label indexes lm-eval's choices
        assert task.doc_to_target(doc) == raw["label"]


def test_cli_tasks_lists_category_and_offline(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [n for names in PAPER_TASKS.values() for n in names]
    assert main(["tasks"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["sst2", "offline"] for line in lines)
    assert any(line.split()[:3] == ["qqp", "hub", "only"] for line in lines)
    assert any(line.split()[:3] == ["mednli", "user", "file"] for line in lines)


# Hub-schema rows written by the test: our own YAMLs and lm-eval's online-only configs must read them.
FIXTURES = {
    "yelp": [{"text": "Great tacos, friendly staff.", "label": 1}, {"text": "Cold food.", "label": 0}],
    "sentiment140": [{"text": "love it", "date": "d", "user": "u", "sentiment": 4, "query": "q"},
                     {"text": "meh", "date": "d", "user": "u", "sentiment": 2, "query": "q"},
                     {"text": "awful", "date": "d", "user": "u", "sentiment": 0, "query": "q"}],
    "scitail": [{"premise": "Plants make food.", "hypothesis": "Plants photosynthesize.", "label": "entails"},
                {"premise": "Rocks are hard.", "hypothesis": "Water boils.", "label": "neutral"}],
    "mednli": [{"sentence1": "Patient is febrile.", "sentence2": "The patient has a fever",
                "gold_label": "entailment", "pairID": "a"},
               {"sentence1": "No chest pain.", "sentence2": "He smokes.", "gold_label": "neutral", "pairID": "b"},
               {"sentence1": "Afebrile.", "sentence2": "She has a fever.", "gold_label": "contradiction",
                "pairID": "c"}],
    "qqp": [{"question1": "How old is Earth?", "question2": "What is Earth's age?", "label": 1, "idx": 0}],
    "paws": [{"id": 1, "sentence1": "The cat sat.", "sentence2": "The cat was sitting.", "label": 1}],
}
# task -> [(prompt, gold) of each kept row]
EXPECTED = {
    "yelp": [("Great tacos, friendly staff.\nQuestion: Is this sentence positive or negative?\nAnswer:", 1),
             ("Cold food.\nQuestion: Is this sentence positive or negative?\nAnswer:", 0)],
    "sentiment140": [("love it\nQuestion: Is this sentence positive or negative?\nAnswer:", 1),
                     ("awful\nQuestion: Is this sentence positive or negative?\nAnswer:", 0)],
    "scitail": [("Plants make food.\nQuestion: Plants photosynthesize. True or False?\nAnswer:", 0),
                ("Rocks are hard.\nQuestion: Water boils. True or False?\nAnswer:", 1)],
    "mednli": [("Patient is febrile.\nQuestion: The patient has a fever. True, False or Neither?\nAnswer:", 0),
               ("No chest pain.\nQuestion: He smokes. True, False or Neither?\nAnswer:", 1),
               ("Afebrile.\nQuestion: She has a fever. True, False or Neither?\nAnswer:", 2)],
    "qqp": [(("Question 1: How old is Earth?\nQuestion 2: What is Earth's age?\nQuestion: Do both questions "
              "ask the same thing?\nAnswer:"), 1)],
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_hub_schema_fixture_through_each_config(name, tmp_path):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in FIXTURES[name]))
    sources = choose_sources([name], data_files={name: str(path)}, settings=EvaluationSettings())
    with prepared_tasks(sources) as prepared:
        task = prepared.load(name)
        docs = list(task.eval_docs)
    if name == "paws":  # lm-eval's paws_en: the whole pair is each choice, the gold is the label
        assert task.doc_to_choice(docs[0]) == ["The cat sat, right? No, the cat was sitting.",
                                               "The cat sat, right? Yes, the cat was sitting."]
        assert task.doc_to_target(docs[0]) == 1
        return
    assert [(task.doc_to_text(doc), task.doc_to_target(doc)) for doc in docs] == EXPECTED[name]


def test_unreadable_user_file_is_one_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{not json\n')
    sources = choose_sources(["yelp"], data_files={"yelp": str(path)}, settings=EvaluationSettings())
    with prepared_tasks(sources) as prepared, pytest.raises(UserError) as error:
        prepared.load("yelp")
    message = str(error.value)
    assert message.startswith(f"task yelp: {path}: cannot read") and "\n" not in message
