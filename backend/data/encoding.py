"""How a text becomes a model's input for NSA and the neuron index: tokens with character spans.

``encode_text`` tokenizes with offsets (truncation flagged). ``encode_for_attribution`` puts a
start token in front, for this reason:

LLMs park huge "attention sink" activations on whatever token comes first: on SmolLM2 the
first token's MLP activations are ~25x those of any other token, and a few neurons reach
1000x their layer's median there. When the tokenizer adds no BOS (SmolLM2, GPT-2, Qwen), the
first *word* of the text takes that role, and a text starting with an influential word
("exciting and direct ...") hands the top scores to sink neurons that say nothing about it.
So NSA puts the tokenizer's BOS (or, without one, its EOS, the usual document separator) in
front, as a special token with an empty character span: it is never scored, and the first
word is seen like any other. Tokenizers that already add a BOS are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.errors import UserError


@dataclass
class EncodedText:
    text: str
    input_ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    truncated: bool


def encode_text(tokenizer, text: str, max_tokens: int) -> EncodedText:
    """Tokenize ``text`` with character offsets, truncating to ``max_tokens`` (flagged)."""
    if not text or not text.strip():
        raise UserError("empty text")
    encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    ids: list[int] = list(encoded["input_ids"])
    offsets = [tuple(span) for span in encoded["offset_mapping"]]
    truncated = len(ids) > max_tokens
    if truncated:
        ids, offsets = ids[:max_tokens], offsets[:max_tokens]
    tokens = [text[start:end] for start, end in offsets]
    return EncodedText(text, ids, tokens, offsets, truncated)


def start_token_id(tokenizer) -> int | None:
    """The token put in front of texts that do not start with a special token."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return None


def encode_for_attribution(tokenizer, text: str, max_tokens: int) -> EncodedText:
    """``encode_text`` (same tokens, offsets, truncation flag) with a leading start token."""
    encoded = encode_text(tokenizer, text, max_tokens)
    start = start_token_id(tokenizer)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if start is None or (encoded.input_ids and encoded.input_ids[0] in special and encoded.offsets[0] == (0, 0)):
        return encoded
    if len(encoded.input_ids) >= max_tokens:  # make room for the start token
        encoded = encode_text(tokenizer, text, max_tokens - 1)
        encoded.truncated = True
    return EncodedText(
        text=encoded.text,
        input_ids=[start, *encoded.input_ids],
        tokens=["", *encoded.tokens],
        offsets=[(0, 0), *encoded.offsets],
        truncated=encoded.truncated,
    )
