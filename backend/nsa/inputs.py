"""The token input of NSA's forward passes: ``encode_text``'s tokens behind a start token.

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

import json

from backend.errors import UserError
from backend.nsa.capture import EncodedText, encode_text


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


def jsonl_records(content: str, name: str) -> list[dict]:
    """NSA's ``.jsonl`` input: one ``{"text", "label_text"?, "words"?}`` object per non-blank line.

    ``words`` (a list of strings) are that text's own influential words. The CLI's ``--file``
    and the HTTP upload read .jsonl with this one parser.
    """
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{name}:{number}: not valid JSON") from exc
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UserError(f"{name}:{number}: expected an object with a \"text\" string")
        words = row.get("words")
        if words is not None and not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise UserError(f"{name}:{number}: \"words\" must be a list of strings")
        rows.append(row)
    return rows
