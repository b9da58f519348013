"""Dense model against chance per task, and label bias: which tasks can carry a claim at all.

A model at chance on a task gains or loses accuracy by shifting which label it prefers, not by
knowing more. From the stored per-example scores and the task's gold labels (read through
lm-eval's own task config) this gives, per task: the dense accuracy with its Wilson interval,
the majority-label baseline of the sampled examples, a one-sided binomial test of the accuracy
against that baseline (``scipy.stats.binomtest``), and, on tasks with one fixed label set (binary
classification: a wrong answer is the other label), the share of predictions per label and the
balanced accuracy (mean recall per label), which a change of label preference does not move.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import stats

INFORMATIVE, UNINFORMATIVE = "informative", "uninformative for this model"


@dataclass(frozen=True)
class TaskLabels:
    """Gold answer index per doc id, and the label names when every doc has the same choices."""

    gold: dict[int, int]
    label_names: tuple[str, ...] | None


def gold_labels(tasks: list[str], doc_ids: dict[str, list[int]]) -> dict[str, TaskLabels]:
    """Gold labels of the given docs of each task, as lm-eval's task config defines them."""
    from backend.evaluation.registry import choose_sources, prepared_tasks

    labels = {}
    with prepared_tasks(choose_sources(tasks)) as prepared:
        for name in tasks:
            task = prepared.load(name)
            docs = task.eval_docs
            gold, choice_sets = {}, set()
            for doc_id in doc_ids.get(name, []):
                doc = docs[doc_id]
                choices = tuple(str(c) for c in task.doc_to_choice(doc))
                target = task.doc_to_target(doc)
                gold[doc_id] = choices.index(str(target)) if isinstance(target, str) and str(target) in choices \
                    else int(target)
                choice_sets.add(choices)
            fixed = next(iter(choice_sets)) if len(choice_sets) == 1 else None
            labels[name] = TaskLabels(gold, fixed)
    return labels


def predicted_labels(scores: dict[int, float], labels: TaskLabels) -> dict[int, int] | None:
    """Each example's predicted label where it can be known: binary tasks with fixed labels."""
    if labels.label_names is None or len(labels.label_names) != 2:
        return None
    return {doc: labels.gold[doc] if score >= 0.5 else 1 - labels.gold[doc] for doc, score in scores.items()}


def label_profile(scores: dict[int, float], labels: TaskLabels) -> dict:
    """Accuracy, balanced accuracy and prediction shares per label (binary tasks; else None)."""
    docs = sorted(set(scores) & set(labels.gold))
    gold = np.array([labels.gold[d] for d in docs])
    correct = np.array([scores[d] for d in docs])
    predicted = predicted_labels({d: scores[d] for d in docs}, labels)
    profile: dict = {"n": len(docs), "accuracy": float(correct.mean()) if docs else None,
                     "balanced_accuracy": None, "prediction_shares": None}
    if predicted is not None and docs:
        names = labels.label_names or ()
        recalls = [float(correct[gold == label].mean()) for label in range(len(names)) if (gold == label).any()]
        profile["balanced_accuracy"] = float(np.mean(recalls))
        counts = Counter(predicted.values())
        profile["prediction_shares"] = {names[label]: counts.get(label, 0) / len(docs) for label in range(len(names))}
    return profile


def dense_against_chance(task: str, scores: dict[int, float], labels: TaskLabels, alpha: float) -> dict:
    """Is the dense model clearly better than always answering the majority label?"""
    docs = sorted(set(scores) & set(labels.gold))
    hits = int(sum(scores[d] >= 0.5 for d in docs))
    gold_counts = Counter(labels.gold[d] for d in docs)
    majority_share = max(gold_counts.values()) / len(docs)
    names = labels.label_names
    gold_shares = {(names[label] if names else str(label)): count / len(docs)
                   for label, count in sorted(gold_counts.items())}
    test = stats.binomtest(hits, len(docs), p=majority_share, alternative="greater")
    # the test is one-sided; the interval shown is the two-sided 95% Wilson interval
    interval = stats.binomtest(hits, len(docs)).proportion_ci(confidence_level=0.95, method="wilson")
    informative = test.pvalue < alpha
    return {"task": task, "n": len(docs), "accuracy": hits / len(docs), "low": float(interval.low),
            "high": float(interval.high), "majority_baseline": majority_share, "gold_shares": gold_shares,
            "p_value": float(test.pvalue), "status": INFORMATIVE if informative else UNINFORMATIVE,
            **{key: value for key, value in label_profile(scores, labels).items()
               if key in ("balanced_accuracy", "prediction_shares")}}


def label_bias_note(task: str, before: dict[int, float], after: dict[int, float], labels: TaskLabels,
                    what: str) -> str | None:
    """A note when an accuracy change between two conditions is (mostly) a change of label
    preference: the share of one predicted label moves at least as much as the accuracy, while
    the balanced accuracy moves by under half of it."""
    first, second = label_profile(before, labels), label_profile(after, labels)
    if first["prediction_shares"] is None or second["prediction_shares"] is None:
        return None
    change = second["accuracy"] - first["accuracy"]
    name = next(iter(first["prediction_shares"]))
    share_change = second["prediction_shares"][name] - first["prediction_shares"][name]
    balanced_change = second["balanced_accuracy"] - first["balanced_accuracy"]
    if abs(change) < 1e-9 or abs(share_change) < abs(change) or abs(balanced_change) >= abs(change) / 2:
        return None
    return (f"{task}, {what}: accuracy {100 * change:+.1f} pts comes with '{name}' predicted "
            f"{100 * share_change:+.1f} pts more often and balanced accuracy {100 * balanced_change:+.1f} pts: "
            "a change of label bias more than of skill")
