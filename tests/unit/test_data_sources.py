"""Named text sets: the offline sets read real documents from the wheels, hub loaders read files
of the hub's layout (written here into a local folder), user files in three formats, one-line
errors for everything the user can fix."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backend.cli import main
from backend.data import hub_sets, sources
from backend.data.sources import (
    HubFile,
    hub_file_url,
    labelled_examples,
    list_text_sets,
    load_corpus,
    load_documents,
)
from backend.errors import NotFoundError, UserError

OFFLINE_SETS = ("arc_challenge", "arc_easy", "boolq", "rte", "sst2", "lambada", "imdb")
HUB_SETS = ("c4", "wikitext2", "ptb", "wnli")


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- registry


def test_list_text_sets_describes_every_named_set_and_file_paths():
    rows = {row["name"]: row for row in list_text_sets()}
    assert set(rows) == set(OFFLINE_SETS) | set(HUB_SETS) | {"file:PATH"}
    for name in OFFLINE_SETS:
        assert rows[name]["offline"] is True and "calibration" in rows[name]["splits"]
    for name in HUB_SETS:
        assert rows[name]["offline"] is False
    assert rows["wikitext2"]["splits"] == ["calibration", "heldout"]
    assert rows["lambada"]["splits"] == ["calibration", "heldout"]
    assert rows["sst2"]["labelled_splits"] == ["validation"]
    assert rows["imdb"]["labelled_splits"] == ["train"]
    assert all(row["description"] for row in rows.values())


def test_unknown_set_and_split_name_the_choices():
    with pytest.raises(NotFoundError) as error:
        load_documents("c5")
    message = _one_line(error)
    for name in OFFLINE_SETS + HUB_SETS + ("file:PATH",):
        assert name in message
    with pytest.raises(UserError) as error:
        load_documents("sst2", "heldout")
    assert "calibration" in _one_line(error)
    with pytest.raises(UserError) as error:
        load_documents("sst2", "test")
    assert "heldout" in _one_line(error)


# --------------------------------------------------------------------------- offline sets


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("sst2", 872),
        ("rte", 277),
        ("boolq", 3270),
        ("arc_challenge", 299),
        ("arc_easy", 570),
        ("imdb", 25000),
    ],
)
def test_offline_sets_load_the_documented_number_of_real_documents(name, count):
    documents = load_documents(name)
    assert len(documents) == count
    assert all(isinstance(text, str) and text.strip() == text and text for text in documents)
    sample = documents[:: max(1, count // 200)]
    letters = sum(ch.isalpha() for text in sample for ch in text)
    assert letters / sum(len(text) for text in sample) > 0.6  # prose, not ids or markup


def test_lambada_splits_its_5153_passages_into_disjoint_calibration_and_heldout():
    calibration = load_documents("lambada", "calibration")
    heldout = load_documents("lambada", "heldout")
    assert len(heldout) == sources.LAMBADA_HELDOUT_PASSAGES
    assert len(calibration) + len(heldout) == 5153
    assert not set(calibration) & set(heldout)
    # The first passage of the test split, completed with its answer word.
    assert heldout[0].startswith("In my palm is a clear stone")
    assert heldout[0].endswith("I don't care about signs")


def test_task_examples_are_written_as_the_natural_text_of_the_task():
    arc = load_documents("arc_easy")[0]
    assert arc == (
        "Question: Which technology was developed most recently?\n"
        "A. cellular telephone\nB. television\nC. refrigerator\nD. airplane\n"
        "Answer: cellular telephone"
    )
    boolq = load_documents("boolq")[0]
    assert boolq.startswith("All biomass goes through at least some of these steps")
    assert boolq.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer: no"
    )
    rte = load_documents("rte")[0]  # label 1 = not_entailment
    assert rte.endswith(
        "\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer: False"
    )
    assert load_documents("sst2")[0] == "it 's a charming and often affecting journey ."
    assert not any("<br />" in review for review in load_documents("imdb"))


def test_load_documents_hands_out_copies_of_a_cached_load():
    first = load_documents("sst2")
    first.clear()
    assert len(load_documents("sst2")) == 872
    assert load_corpus("sst2") is load_corpus("sst2")


def test_labelled_examples_are_consistent_seeded_samples_without_repeats():
    every = labelled_examples("sst2", 872)
    assert (
        sum(example["label"] for example in every) == 444
    )  # SST-2 dev: 444 positive, 428 negative
    for example in every:
        assert example["label_text"] == ("negative", "positive")[example["label"]]
    sample = labelled_examples("sst2", 10, seed=3)
    assert len({example["text"] for example in sample}) == 10
    assert sample == labelled_examples("sst2", 10, seed=3)
    assert sample != labelled_examples("sst2", 10, seed=4)
    assert {example["text"] for example in sample} <= set(load_documents("sst2"))


def test_labelled_examples_for_rte_boolq_and_imdb():
    rte = labelled_examples("rte", 277)
    assert {(e["label"], e["label_text"]) for e in rte} == {(0, "True"), (1, "False")}
    assert all(e["text"].endswith("True or False?") for e in rte)
    boolq = labelled_examples("boolq", 50, seed=1)
    assert {e["label_text"] for e in boolq} <= {"no", "yes"}
    assert all(("no", "yes")[e["label"]] == e["label_text"] for e in boolq)
    imdb = labelled_examples("imdb", 25000, split="train")
    assert sum(e["label"] for e in imdb) == 12500


def test_labelled_examples_errors_are_one_line():
    with pytest.raises(UserError) as error:
        labelled_examples("imdb", 5)  # IMDB ships its train split only
    assert "train" in _one_line(error)
    with pytest.raises(UserError) as error:
        labelled_examples("lambada", 5)
    assert "sst2" in _one_line(error)
    with pytest.raises(UserError) as error:
        labelled_examples("rte", 278)
    assert "277" in _one_line(error)
    for bad in (0, -1, True, 2.5):
        with pytest.raises(UserError):
            labelled_examples("sst2", bad)


# --------------------------------------------------------------------------- hub loaders, local hub


def test_hub_file_url_points_at_the_right_repository_revision_and_file():
    assert (
        hub_file_url(hub_sets.C4_TRAIN)
        == "hf://datasets/allenai/c4/en/c4-train.00000-of-01024.json.gz"
    )
    assert hub_file_url(hub_sets.PTB_TEST) == (
        "hf://datasets/ptb-text-only/ptb_text_only@refs%2Fconvert%2Fparquet"
        "/penn_treebank/test/0000.parquet"
    )
    assert hub_file_url(HubFile("Salesforce/wikitext", "a/b.parquet", "parquet")) == (
        "hf://datasets/Salesforce/wikitext/a/b.parquet"
    )


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """Serve hub files from a folder laid out as <repo_id>/<path>; datasets caches under tmp."""
    import datasets

    root = tmp_path / "hub"
    monkeypatch.setattr(
        hub_sets, "hub_file_url", lambda hub_file: str(root / hub_file.repo_id / hub_file.path)
    )
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    sources.clear_caches()
    yield root
    sources.clear_caches()


def _write_parquet(path: Path, columns: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def _write_json_gz(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def test_c4_loader_reads_train_shard_and_first_1100_validation_documents(local_hub):
    train = [f"Train document {index}. " * 3 for index in range(20)]
    validation = [f"Validation document {index}." for index in range(1105)]
    stamp = {"timestamp": "2019-04-25T12:57:54Z", "url": "https://example.com"}
    _write_json_gz(
        local_hub / "allenai/c4/en/c4-train.00000-of-01024.json.gz",
        [{"text": text, **stamp} for text in train],
    )
    _write_json_gz(
        local_hub / "allenai/c4/en/c4-validation.00000-of-00008.json.gz",
        [{"text": text, **stamp} for text in validation],
    )
    assert load_documents("c4") == train
    heldout = load_corpus("c4", "heldout")
    assert list(heldout.documents) == validation[:1100]
    assert heldout.joined_text() == " ".join(validation[:1100])  # the reference's C4 join
    assert list(load_corpus("c4").byte_lengths) == [len(text.encode()) for text in train]


def test_wikitext2_loader_keeps_rows_as_published_and_joins_like_the_reference(local_hub):
    train = [" = Valkyria = \n", "", " Senjō no Valkyria 3 is a game . \n", ""]
    test = [" = Robert Boulter = \n", "", " Robert Boulter is an English actor . \n"]
    _write_parquet(
        local_hub / "Salesforce/wikitext/wikitext-2-raw-v1/train-00000-of-00001.parquet",
        {"text": train},
    )
    _write_parquet(
        local_hub / "Salesforce/wikitext/wikitext-2-raw-v1/test-00000-of-00001.parquet",
        {"text": test},
    )
    assert load_documents("wikitext2") == train
    assert load_corpus("wikitext2").joined_text() == " ".join(train)
    assert load_corpus("wikitext2", "heldout").joined_text() == "\n\n".join(test)


def test_ptb_loader_reads_the_sentence_column_of_the_parquet_conversion(local_hub):
    train = ["aer banknote berlitz calloway", "pierre <unk> N years old will join the board"]
    test = ["no it was n't black monday", "but while the new york stock exchange did n't fall"]
    _write_parquet(
        local_hub / "ptb-text-only/ptb_text_only/penn_treebank/train/0000.parquet",
        {"sentence": train},
    )
    _write_parquet(
        local_hub / "ptb-text-only/ptb_text_only/penn_treebank/test/0000.parquet",
        {"sentence": test},
    )
    assert load_documents("ptb") == train
    assert load_corpus("ptb", "heldout").joined_text() == " ".join(test)


def test_wnli_loader_writes_premise_hypothesis_and_glue_wnli_labels(local_hub):
    _write_parquet(
        local_hub / "nyu-mll/glue/wnli/train-00000-of-00001.parquet",
        {
            "sentence1": [
                "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",
                "John couldn't see the stage with Billy in front of him because he is so short.",
            ],
            "sentence2": ["The carrot had a hole.", "Billy is so short."],
            "label": [1, 0],  # WNLI: 1 = entailment
            "idx": [0, 1],
        },
    )
    assert load_documents("wnli") == [
        (
            "I stuck a pin through a carrot. When I pulled the pin out, it had a hole.\n"
            "Question: The carrot had a hole. True or False?\nAnswer: True"
        ),
        (
            "John couldn't see the stage with Billy in front of him because he is so short.\n"
            "Question: Billy is so short. True or False?\nAnswer: False"
        ),
    ]


def test_unreadable_hub_file_is_a_one_line_error_naming_the_offline_sets(local_hub):
    with pytest.raises(UserError) as error:
        load_documents("wikitext2", "heldout")  # nothing written under the local hub
    message = _one_line(error)
    assert message.startswith("wikitext2 ")
    for name in OFFLINE_SETS:
        assert name in message


@pytest.mark.parametrize("name", HUB_SETS)
def test_offline_mode_error_for_hub_sets_names_the_set_and_the_offline_sets(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sources.clear_caches()

    def no_network(*_args, **_kwargs):
        raise AssertionError("the hub must not be contacted in offline mode")

    monkeypatch.setattr("datasets.load_dataset", no_network)
    with pytest.raises(UserError) as error:
        load_documents(name)
    message = _one_line(error)
    assert message.startswith(f"{name} ") and "HF_HUB_OFFLINE" in message
    for offline in OFFLINE_SETS + ("file:PATH",):
        assert offline in message
    for hub_only in set(HUB_SETS) - {name}:
        assert hub_only not in message.split("offline:")[1]


# --------------------------------------------------------------------------- file: sources


def test_txt_file_paragraphs_split_on_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"First paragraph,\nstill first.\r\n\r\nSecond one.\n  \t\nThird.\n\n\n")
    assert load_documents(f"file:{path}") == [
        "First paragraph,\nstill first.",
        "Second one.",
        "Third.",
    ]
    single = tmp_path / "single.txt"
    single.write_text("one line\nand another line\n", encoding="utf-8")
    assert load_documents(f"file:{single}") == ["one line\nand another line"]
    assert load_documents(f"file:{single}", "heldout") == ["one line\nand another line"]


def test_jsonl_and_csv_files_read_their_text_field(tmp_path):
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        '{"text": "alpha", "id": 1}\n\n{"text": "b\\u00e9ta\\nline"}\n', encoding="utf-8"
    )
    assert load_documents(f"file:{jsonl}") == ["alpha", "béta\nline"]
    table = tmp_path / "docs.csv"
    table.write_text('id,text\n1,"quoted, with comma"\n2,"two\nlines"\n3,\n', encoding="utf-8")
    assert load_documents(f"file:{table}") == ["quoted, with comma", "two\nlines"]


def test_an_edited_file_is_read_again(tmp_path):
    path = tmp_path / "live.txt"
    path.write_text("before", encoding="utf-8")
    assert load_documents(f"file:{path}") == ["before"]
    path.write_text("after, longer", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert load_documents(f"file:{path}") == ["after, longer"]


def test_file_prefix_needs_a_file_path(tmp_path):
    with pytest.raises(UserError) as error:
        load_documents("file:")
    assert "path" in _one_line(error)
    with pytest.raises(UserError) as error:
        load_documents(f"file:{tmp_path}")
    assert "not a file" in _one_line(error)


# --------------------------------------------------------------------------- CLI


def test_datasets_command_lists_sets_and_fails_cleanly(capsys, tmp_path):
    assert main(["datasets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {row["name"] for row in listed} == {row["name"] for row in list_text_sets()}
    path = tmp_path / "mine.txt"
    path.write_text("Para one.\n\nPara two.", encoding="utf-8")
    assert main(["datasets", "--show", f"file:{path}", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (
        shown["documents"] == 2 and shown["first_document"] == "Para one." and shown["bytes"] == 18
    )
    assert main(["datasets", "--show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown text set 'nope'") and err.count("\n") == 1
