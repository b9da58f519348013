"""Python pieces of our own task YAMLs (tasks/*.yaml): document processing Jinja cannot express.

Referenced from the YAMLs as ``!function backend.evaluation.task_functions.<name>``, which lm-eval
imports as a module, so they work from any installation.
"""

from __future__ import annotations

# A fixed seed: `limit` takes the first documents, and IMDB's splits are sorted by label.
SHUFFLE_SEED = 1234
MEDNLI_LABELS = ("entailment", "neutral", "contradiction")  # -> lm-eval's MNLI choices True/Neither/False


def shuffled(dataset):
    """The same documents in a fixed pseudo-random order, so a limited run sees both labels."""
    return dataset.shuffle(seed=SHUFFLE_SEED)


def sentiment140_docs(dataset):
    """Keep the positive (4) and negative (0) tweets of the test split; label 0=negative, 1=positive."""
    polar = dataset.filter(lambda doc: int(doc["sentiment"]) in (0, 4))
    return polar.map(lambda doc: {"label": int(int(doc["sentiment"]) == 4)})


def scitail_docs(dataset):
    """SciTail (tsv_format): label 'entails' -> 0 ('True'), 'neutral' -> 1 ('False'), as RTE's order."""
    return dataset.map(lambda doc: {"target": 0 if str(doc["label"]).strip() == "entails" else 1})


def mednli_docs(dataset):
    """MedNLI jsonl (sentence1, sentence2, gold_label) -> the premise/hypothesis/label of lm-eval's MNLI."""
    return dataset.map(
        lambda doc: {
            "premise": doc["sentence1"],
            "hypothesis": doc["sentence2"],
            "label": MEDNLI_LABELS.index(str(doc["gold_label"]).strip()),
        }
    )


def mnli_style_text(doc) -> str:
    """The prompt of lm-eval's glue/mnli task (hypothesis ends with a period)."""
    hypothesis = doc["hypothesis"].strip()
    if not hypothesis.endswith("."):
        hypothesis += "."
    return f"{doc['premise']}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"
