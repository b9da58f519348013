"""The label probe: a task's completion prompt around a text, and the log-prob margin of its labels.

The fallback attribution (gradient x input) and the ablation check both measure how much the
model prefers one label word over the other after the probe, e.g. ``log p(" positive") -
log p(" negative")`` after "Review: <text>\\nIs this review positive or negative? Answer:".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.data.encoding import EncodedText, encode_text
from backend.nsa.tasks import TaskSpec


@dataclass
class ProbeEncoding:
    """A probe prompt ready to run; ``text_start`` maps text offsets to prompt offsets."""

    encoded: EncodedText  # the whole prompt, tokenized with offsets
    text_start: int  # character index in the prompt where the user's text begins
    label_ids: tuple[list[int], list[int]]  # token ids of each label continuation

    @property
    def input_ids(self) -> list[int]:
        return self.encoded.input_ids


def encode_probe(tokenizer, text: str, task: TaskSpec, max_tokens: int) -> ProbeEncoding:
    """Tokenize the probe around ``text``; the text is cut (from its end) so that the prompt fits."""
    prefix, suffix = task.probe.split("{text}")
    label_ids = tuple(tokenizer(word, add_special_tokens=False)["input_ids"] for word in task.label_words)
    # Room for the longest label continuation, which is appended after the prompt.
    budget = max_tokens - max(len(ids) for ids in label_ids)
    encoded = encode_text(tokenizer, prefix + text + suffix, budget)
    if encoded.truncated:
        # Keep the question at the end: drop text from its end until prompt + suffix fit.
        suffix_tokens = len(tokenizer(suffix, add_special_tokens=False)["input_ids"])
        head = encode_text(tokenizer, prefix + text, max(budget - suffix_tokens - 1, 1))
        kept = (prefix + text)[: head.offsets[-1][1]] if head.offsets else prefix
        encoded = encode_text(tokenizer, kept + suffix, budget)
        encoded.truncated = True
    return ProbeEncoding(encoded=encoded, text_start=len(prefix), label_ids=label_ids)


def label_log_probs(model, probe: ProbeEncoding, *, embeds: torch.Tensor | None = None,
                    batch: int = 1) -> torch.Tensor:
    """``[batch, 2]`` log-probabilities of the two label continuations after the probe prompt.

    ``embeds`` (``[batch, tokens, hidden]``, the prompt's input embeddings) replaces the token
    ids so that gradients can flow to the input; without it the prompt's ids are repeated
    ``batch`` times (rows differ only through hooks, e.g. one ablation per row). Only the
    logits that are read are computed (``logits_to_keep``).
    """
    device = next(model.parameters()).device
    if embeds is None:
        prompt_ids = torch.tensor([probe.input_ids], device=device).expand(batch, -1)  # [batch, tokens]
        embeds = model.get_input_embeddings()(prompt_ids)  # [batch, tokens, hidden]
    rows = embeds.shape[0]
    if all(len(ids) == 1 for ids in probe.label_ids):
        # One forward pass: both labels are single tokens read from the last position.
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[:, -1]  # [batch, vocab]
        log_probs = torch.log_softmax(_at_least_fp32(logits), dim=-1)
        return log_probs[:, [ids[0] for ids in probe.label_ids]]
    totals = []
    for ids in probe.label_ids:
        continuation = torch.tensor([ids], device=device).expand(rows, -1)  # [batch, label_tokens]
        full = torch.cat([embeds, model.get_input_embeddings()(continuation)], dim=1)
        # Token i of the continuation is predicted at position prompt_len - 1 + i: the last
        # len(ids) + 1 positions hold them (and one position past the end, unused).
        logits = model(inputs_embeds=full, use_cache=False, logits_to_keep=len(ids) + 1).logits
        log_probs = torch.log_softmax(_at_least_fp32(logits[:, : len(ids)]), dim=-1)  # [batch, label_tokens, vocab]
        totals.append(log_probs.gather(-1, continuation.unsqueeze(-1)).squeeze(-1).sum(-1))  # [batch]
    return torch.stack(totals, dim=-1)


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits are too coarse for log-softmax differences; fp64 stays fp64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def margin(log_probs: torch.Tensor, label_index: int) -> torch.Tensor:
    """How much more the model believes the label than the other one (nats), over the last axis."""
    return log_probs[..., label_index] - log_probs[..., 1 - label_index]
