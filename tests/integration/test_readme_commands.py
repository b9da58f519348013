"""The README's first table works offline: every command in it parses with its placeholders
filled in, and the ones that finish in seconds run for real with the hub switched off."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from backend.cli import build_parser, main

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.integration


def first_table_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    table = text[text.index("## What it does"):]
    table = table[:table.index("\n\n", table.index("| command"))]
    return [match.group(1) for match in re.finditer(r"^\| `(prunelens [^`]+)`", table, re.MULTILINE)]


def filled(command: str, variant: str, tmp_path: Path) -> list[str]:
    """The command's argv with its placeholders replaced and its optional parts ([...]) dropped."""
    command = re.sub(r"\s*\[[^\]]*\]", "", command)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: readme\nmodel: smollm2-135m-instruct\n", encoding="utf-8")
    replacements = {"ID,ID": f"{variant},{variant}", "ID": variant, "VARIANT": variant, "T": "A fine film.",
                    "OUT": str(tmp_path / "out.json"), "SPEC.yaml": str(spec)}
    return [replacements.get(part, part) for part in shlex.split(command)][1:]


def test_the_table_lists_the_main_commands():
    names = {command.split()[1] for command in first_table_commands()}
    assert {"models", "prune", "methods", "variants", "evaluate", "attribute", "speed", "serve"} <= names


def test_every_command_of_the_first_table_parses(tmp_path):
    parser = build_parser()
    for command in first_table_commands():
        args = parser.parse_args(filled(command, "wanda-lambada-s0.5-0123456789", tmp_path))
        assert callable(args.run), command


def test_the_quick_commands_run_offline(isolated_cache, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    commands = first_table_commands()
    prune = next(c for c in commands if c.startswith("prunelens prune") and "--protect" not in c)
    # the table's prune, on fewer and shorter windows so that it takes seconds
    assert main([*filled(prune, "", tmp_path), "--nsamples", "2", "--seqlen", "32"]) == 0
    printed = capsys.readouterr().out
    variant = re.search(r"^(wanda-lambada-\S+)", printed, re.MULTILINE).group(1)  # the id `prune` prints
    for command in commands:
        name = command.split()[1]
        if name in {"models", "methods", "variants", "tasks", "datasets", "activations"}:
            assert main(filled(command, variant, tmp_path)) == 0, command
        elif name == "perplexity":
            assert main([*filled(command, variant, tmp_path), "--max-windows", "2", "--seqlen", "32"]) == 0, command
    out = capsys.readouterr().out
    assert variant in out  # `prunelens variants` lists it
    assert (tmp_path / "out.json").is_file()  # `prunelens activations` wrote its JSON
