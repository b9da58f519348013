"""How each task's examples are written as text (docs/datasets.md shows them).

The labelled ``text`` is what a model reads; a calibration document adds the answer as
``"\\nAnswer: ..."``, so calibration sees the task as it would be asked and answered.
"""

from __future__ import annotations

from collections.abc import Sequence


def with_answer(text: str, answer: str) -> str:
    return f"{text}\nAnswer: {answer}"


def arc_text(example: dict) -> str:
    choices = example["choices"]
    lines = [f"Question: {example['question'].strip()}"]
    lines += [f"{label}. {text.strip()}" for label, text in zip(choices["label"], choices["text"])]
    return "\n".join(lines)


def arc_document(example: dict) -> str:
    choices = example["choices"]
    answer = choices["text"][choices["label"].index(example["answerKey"])].strip()
    return with_answer(arc_text(example), answer)


def boolq_example(example: dict) -> dict:
    label = int(example["answer"])  # 0 = false, 1 = true
    text = f"{example['passage'].strip()}\nQuestion: {example['question'].strip()}?"
    return {"text": text, "label": label, "label_text": ("no", "yes")[label]}


def entailment_text(premise: str, hypothesis: str) -> str:
    return f"{premise.strip()}\nQuestion: {hypothesis.strip()} True or False?"


def rte_example(example: dict) -> dict:
    label = int(example["label"])  # GLUE RTE: 0 = entailment, 1 = not_entailment
    text = entailment_text(example["sentence1"], example["sentence2"])
    return {"text": text, "label": label, "label_text": ("True", "False")[label]}


def wnli_document(example: dict) -> str:
    # GLUE WNLI counts the other way round from RTE: 1 = entailment, 0 = not_entailment.
    answer = "True" if int(example["label"]) == 1 else "False"
    return with_answer(entailment_text(example["sentence1"], example["sentence2"]), answer)


def sst2_example(example: dict) -> dict:
    label = int(example["label"])  # 0 = negative, 1 = positive
    return {
        "text": example["sentence"].strip(),
        "label": label,
        "label_text": ("negative", "positive")[label],
    }


def review_example(raw_text: str, label: int) -> dict:
    # IMDB reviews keep the site's HTML line breaks; as text they are newlines.
    return {
        "text": raw_text.replace("<br />", "\n").strip(),
        "label": label,
        "label_text": ("negative", "positive")[label],
    }


def example_texts(examples: Sequence[dict]) -> list[str]:
    return [example["text"] for example in examples]


def calibration_texts(examples: Sequence[dict]) -> list[str]:
    """Labelled examples as calibration documents: the text followed by its answer."""
    return [with_answer(example["text"], example["label_text"]) for example in examples]
