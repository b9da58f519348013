"""The layer contract of `make lint` (import-linter) holds, and it fails on a planted back-arrow."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed")


def _copy_of_code(target: Path) -> Path:
    for package in ("backend", "frontend"):
        shutil.copytree(REPO_ROOT / package, target / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def _lint(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first: the copy, not the installed checkout, is the package analysed.
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], check=False, cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def test_the_code_keeps_the_contract(tmp_path):
    result = _lint(_copy_of_code(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "planted"),
    [
        ("backend/pruning/engine.py", "import backend.nsa.service  # planted back-arrow\n"),
        ("backend/models/loader.py", "from backend.pruning import registry  # planted back-arrow\n"),
        ("backend/nsa/scoring.py", "import backend.evaluation.runner  # planted sideways arrow\n"),
        ("frontend/client.py", "import backend.errors  # planted: the frontend talks HTTP only\n"),
    ],
)
def test_a_planted_back_arrow_breaks_the_contract(tmp_path, module, planted):
    root = _copy_of_code(tmp_path)
    path = root / module
    path.write_text(path.read_text() + "\n" + planted)
    result = _lint(root)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout
    importer = module.removesuffix(".py").replace("/", ".")
    assert importer in result.stdout
