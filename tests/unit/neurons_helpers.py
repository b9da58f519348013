"""Shared pieces of the neuron-index tests: a corpus of distinct documents, a pruned copy of a tiny
model, and brute-force activations over the whole corpus."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch

from backend.models.loader import LoadedModel
from backend.nsa.capture import NeuronCapture

WORDS = [
    "movie",
    "slow",
    "acting",
    "beautiful",
    "delightful",
    "warm",
    "funny",
    "film",
    "question",
    "color",
    "sky",
    "blue",
    "cats",
    "animals",
    "pruning",
    "weights",
    "calibration",
    "data",
    "unicode",
    "numbers",
    "river",
    "stone",
    "light",
    "dark",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "sings",
    "quietly",
    "loudly",
    "market",
    "price",
    "rises",
    "falls",
]


def distinct_corpus(path: Path, documents: int = 24, seed: int = 0) -> str:
    """A ``file:`` corpus of documents that differ from their first word on (no exact ties)."""
    rng = random.Random(seed)
    texts = []
    for number in range(documents):
        words = [WORDS[number % len(WORDS)]] + [rng.choice(WORDS) for _ in range(rng.randint(4, 30))]
        texts.append(f"{number} " + " ".join(words) + ".")
    path.write_text("\n\n".join(texts), encoding="utf-8")
    return f"file:{path}"


def pruned_copy(loaded: LoadedModel, fraction: float = 0.5, seed: int = 1) -> LoadedModel:
    """A separate copy of ``loaded`` with a random ``fraction`` of each MLP/attention weight zeroed."""
    model = copy.deepcopy(loaded.model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and not any(part in name for part in ("embed", "wte", "wpe", "lm_head")):
                param.mul_(torch.rand(param.shape, generator=generator) >= fraction)
    return LoadedModel(
        name=loaded.name, model=model, tokenizer=loaded.tokenizer, adapter=loaded.adapter, source=loaded.source
    )


@torch.inference_mode()
def full_activations(
    loaded: LoadedModel, documents: list[list[int]]
) -> tuple[dict[int, torch.Tensor], torch.Tensor, list[tuple[int, int]]]:
    """Each document run alone: per layer [counted tokens, neurons] (start token dropped), the
    logits [counted tokens, vocab], and the (document, position) of each row."""
    layers: dict[int, list[torch.Tensor]] = {}
    logits, where = [], []
    for number, ids in enumerate(documents):
        with NeuronCapture(loaded.model, loaded.adapter) as capture:
            out = loaded.model(input_ids=torch.tensor([ids]), use_cache=False)
        for index in capture.layers:
            layers.setdefault(index, []).append(capture.batched(index, 1)[0, 1:].float())
        logits.append(out.logits[0, 1:].float())
        where += [(number, position) for position in range(1, len(ids))]
    return {index: torch.cat(parts) for index, parts in layers.items()}, torch.cat(logits), where
