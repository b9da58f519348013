"""Token windows: random ones for calibration, consecutive held-out ones for perplexity.

Both kinds come from ``tokenize_and_window``: tokenize a text (no special tokens, so a window
is text and nothing else) and cut ``seqlen``-token windows at chosen starts.

Calibration follows the SparseGPT/Wanda reference code. Where a set has documents longer
than ``seqlen`` tokens (C4), as it draws C4: a random document, redrawn while too short, and
a random offset inside it. Otherwise (SST-2 sentences, ARC questions) windows are cut at
random offsets of the set's text read as one (documents joined by the set's joiner, "\n\n"
by default), as it draws WikiText2: a small set is tokenized whole, once; a large one window
by window, tokenizing only the documents each window covers.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch

from backend.data.sources import CALIBRATION, HELDOUT, TextCorpus, load_corpus
from backend.errors import UserError

# After this many drawn documents in a row turn out too short, the set counts as a
# short-document set and the remaining windows come from its joined text. This bounds the
# tokenizing spent on sets where long documents are rare (IMDB reviews at seqlen 2048).
MAX_CONSECUTIVE_SHORT_DOCUMENTS = 256
# Windows from joined text: a set of at most this many bytes per window token is tokenized
# whole, once (the reference's WikiText2/PTB procedure); a larger one window by window, each
# tokenizing only the documents it covers. English BPE gives about 4 bytes per token, and a
# window costs its seqlen tokens plus the rest of its documents, so this is the break-even.
WHOLE_TEXT_BYTES_PER_WINDOW_TOKEN = 5


class WindowWarning(UserWarning):
    """Windows were made, but not quite as asked (seqlen capped, windows overlap)."""


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of a text, without special tokens: ``LongTensor[tokens]``."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def tokenize_and_window(
    tokenizer, text: str, seqlen: int, choose_starts: Callable[[int], Sequence[int]]
) -> torch.Tensor:
    """Tokenize ``text`` and cut ``ids[start:start + seqlen]`` for each start.

    ``choose_starts(token_count)`` picks the starts once the length is known; it returns no
    start when the text is too short for what the caller wants. Returns ``[len(starts), seqlen]``.
    """
    ids = encode(tokenizer, text)  # [tokens]
    starts = list(choose_starts(ids.numel()))
    if any(not 0 <= start <= ids.numel() - seqlen for start in starts):
        raise ValueError(
            f"window starts {starts} do not fit {ids.numel()} tokens with seqlen {seqlen}"
        )
    if not starts:
        return ids.new_empty((0, seqlen))
    return torch.stack([ids[start : start + seqlen] for start in starts])


def _positive_int(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def calibration_windows(
    tokenizer, name: str, nsamples: int, seqlen: int, seed: int, max_length: int | None = None
) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from a set's calibration split.

    ``seqlen`` is capped at ``max_length`` (the model's context) with a ``WindowWarning``.
    The same arguments give the same windows. Returns ``LongTensor[nsamples, seqlen]``.
    """
    nsamples = _positive_int(nsamples, "nsamples")
    seqlen = _positive_int(seqlen, "seqlen")
    if max_length is not None and seqlen > max_length:
        warnings.warn(
            f"seqlen {seqlen} is longer than the model's context; using {max_length}",
            WindowWarning,
            stacklevel=2,
        )
        seqlen = _positive_int(max_length, "max_length")
    corpus = load_corpus(name, CALIBRATION)
    total_bytes = int(corpus.byte_lengths.sum()) + len(corpus.joiner.encode()) * (len(corpus) - 1)
    if total_bytes < seqlen or not corpus.byte_lengths.any():  # a token is at least one byte
        raise UserError(f"{name}: the calibration text has fewer than seqlen={seqlen} tokens")
    if total_bytes < nsamples * seqlen:
        warnings.warn(
            f"{name} has at most {total_bytes} tokens for {nsamples} x {seqlen}: "
            "calibration windows will overlap",
            WindowWarning,
            stacklevel=2,
        )

    rng = random.Random(seed)
    windows = _windows_from_long_documents(tokenizer, corpus, nsamples, seqlen, rng)
    remaining = nsamples - len(windows)
    if remaining and total_bytes <= WHOLE_TEXT_BYTES_PER_WINDOW_TOKEN * remaining * seqlen:
        windows.extend(_windows_from_whole_text(tokenizer, corpus, remaining, seqlen, rng, name))
    elif remaining:
        # Empty documents get weight zero: a window never starts in one.
        cumulative_sizes = np.cumsum(corpus.byte_lengths).tolist()
        while len(windows) < nsamples:
            windows.append(
                _window_from_joined_text(tokenizer, corpus, cumulative_sizes, seqlen, rng, name)
            )
    return torch.stack(windows)  # [nsamples, seqlen]


def _windows_from_long_documents(
    tokenizer, corpus: TextCorpus, nsamples: int, seqlen: int, rng: random.Random
) -> list[torch.Tensor]:
    """The reference draw: random documents with more than seqlen tokens, random offsets."""
    # A token is at least one byte, so shorter documents cannot hold a window: skip them
    # without tokenizing. Documents found too short leave the pool (the draw always ends).
    pool = np.flatnonzero(corpus.byte_lengths >= seqlen).tolist()
    windows: list[torch.Tensor] = []
    misses = 0
    while len(windows) < nsamples and pool and misses < MAX_CONSECUTIVE_SHORT_DOCUMENTS:
        slot = rng.randrange(len(pool))
        found = tokenize_and_window(
            tokenizer,
            corpus.documents[pool[slot]],
            seqlen,
            lambda count: [rng.randrange(count - seqlen)] if count > seqlen else [],
        )
        if len(found):
            windows.append(found[0])
            misses = 0
        else:
            pool[slot] = pool[-1]
            pool.pop()
            misses += 1
    return windows


def _windows_from_whole_text(
    tokenizer, corpus: TextCorpus, count: int, seqlen: int, rng: random.Random, name: str
) -> list[torch.Tensor]:
    """The reference's WikiText2/PTB draw: the joined text tokenized once, random offsets."""

    def random_starts(token_count: int) -> list[int]:
        if token_count < seqlen:
            return []
        return [rng.randrange(max(token_count - seqlen, 1)) for _ in range(count)]

    found = tokenize_and_window(tokenizer, corpus.joined_text(), seqlen, random_starts)
    if not len(found):
        raise UserError(f"{name}: the calibration text has fewer than seqlen={seqlen} tokens")
    return list(found)


def _window_from_joined_text(
    tokenizer,
    corpus: TextCorpus,
    cumulative_sizes: list[int],
    seqlen: int,
    rng: random.Random,
    name: str,
) -> torch.Tensor:
    """A window at a random token of the joined text (documents drawn in proportion to size).

    The window starts inside the drawn document and runs on into the following ones
    (wrapping from the last document to the first).
    """
    documents, sizes = corpus.documents, corpus.byte_lengths
    count = len(documents)
    first = rng.choices(range(count), cum_weights=cumulative_sizes)[0]
    first_tokens = max(encode(tokenizer, documents[first]).numel(), 1)
    offset = rng.randrange(first_tokens)
    needed = offset + seqlen
    joiner_bytes = len(corpus.joiner.encode())

    parts, size, used = [documents[first]], int(sizes[first]), 1
    # Guess the bytes the window needs from the first document's bytes per token, so that
    # the chunk is usually tokenized once.
    target_bytes = int(needed * max(int(sizes[first]) / first_tokens, 1.0) * 1.1)
    while True:
        while size < target_bytes and used < count:
            index = (first + used) % count
            parts.append(documents[index])
            size += int(sizes[index]) + joiner_bytes
            used += 1
        token_counts: list[int] = []
        choose = partial(
            _start_in_chunk,
            offset=offset,
            seqlen=seqlen,
            whole_set=used == count,
            token_counts=token_counts,
        )
        found = tokenize_and_window(tokenizer, corpus.joiner.join(parts), seqlen, choose)
        if len(found):
            return found[0]
        if used == count:
            raise UserError(
                f"{name}: the calibration text has {token_counts[0]} tokens, "
                f"fewer than seqlen={seqlen}"
            )
        # Grow by the bytes-per-token ratio seen so far, plus a margin.
        target_bytes = max(size + 1, int(size * needed / max(token_counts[0], 1) * 1.1))


def _start_in_chunk(
    token_count: int, *, offset: int, seqlen: int, whole_set: bool, token_counts: list[int]
) -> list[int]:
    """Where the window starts in a chunk of joined documents; none while the chunk is short."""
    token_counts.append(token_count)
    if token_count >= offset + seqlen:
        return [offset]
    if whole_set and token_count >= seqlen:
        # The whole set is shorter than offset + seqlen: the window ends where the set ends.
        return [token_count - seqlen]
    return []


def heldout_windows(
    tokenizer, name: str, seqlen: int, max_windows: int | None = None
) -> torch.Tensor:
    """Consecutive non-overlapping ``seqlen``-token windows over a set's joined held-out text.

    Windows cover the text in order from its first token; the tail shorter than ``seqlen``
    is dropped; ``max_windows`` keeps the first ones. Returns ``LongTensor[n, seqlen]``.
    """
    seqlen = _positive_int(seqlen, "seqlen")
    if max_windows is not None:
        max_windows = _positive_int(max_windows, "max_windows")
    corpus = load_corpus(name, HELDOUT)

    def consecutive(token_count: int) -> range:
        count = token_count // seqlen
        if max_windows is not None:
            count = min(count, max_windows)
        return range(0, count * seqlen, seqlen)

    windows = tokenize_and_window(tokenizer, corpus.joined_text(), seqlen, consecutive)
    if windows.shape[0] == 0:
        raise UserError(f"{name}: the held-out text has fewer than seqlen={seqlen} tokens")
    return windows  # [n, seqlen]
