"""Step-1 check: does removing an influential word move the model's label margin?

For each word, the text is probed again with every occurrence of the word cut out, and
``margin_change = margin(text) - margin(text without the word)`` is recorded (nats of
``log p(label) - log p(other label)`` after the task's probe; the label is the gold one when
known, else the model's own prediction on the full text). A word whose removal moves the
margin by less than ``NO_EFFECT_NATS`` either way is flagged ``no_effect``: it is kept (the
user or the model chose it) but the result says the model's decision does not lean on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from backend.nsa.influential import WordLocation
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import TaskSpec

NO_EFFECT_NATS = 0.05


def without_spans(text: str, spans: Sequence[tuple[int, int]]) -> str:
    """``text`` with the character spans removed (and the doubled spaces they leave collapsed)."""
    kept, cursor = [], 0
    for start, end in sorted(spans):
        kept.append(text[cursor:start])
        cursor = max(cursor, end)
    kept.append(text[cursor:])
    return re.sub(r" {2,}", " ", "".join(kept)).strip()


@torch.inference_mode()
def _margins(loaded, texts: Sequence[str], task: TaskSpec, label_index: int | None) -> list[float]:
    """The label margin after the probe of each text (label: given, else the first text's prediction)."""
    log_probs = []
    for text in texts:  # one short forward pass each: the probe is a sentence plus a question
        probe = encode_probe(loaded.tokenizer, text, task, loaded.max_length)
        log_probs.append(label_log_probs(loaded.model, probe)[0].float().cpu())
    if label_index is None:
        label_index = int(torch.argmax(log_probs[0]))
    return [float(margin(row, label_index)) for row in log_probs]


def occlusion_check(loaded, text: str, words: Sequence[WordLocation], task: TaskSpec,
                    label_index: int | None = None) -> list[dict]:
    """Per word (in order): ``{margin_change, no_effect}``; see the module docstring."""
    if not words:
        return []
    variants = [text] + [without_spans(text, word.spans) or text for word in words]
    margins = _margins(loaded, variants, task, label_index)
    return [{"margin_change": margins[0] - occluded, "no_effect": abs(margins[0] - occluded) < NO_EFFECT_NATS}
            for occluded in margins[1:]]
