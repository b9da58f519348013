"""PruneLens backend: everything that imports torch (models, pruning, NSA, evaluation, API)."""

__version__ = "0.1.0"
