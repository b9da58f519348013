"""The top examples of a neuron page, built from one neuron's ``examples`` rows with array operations.

A page shows up to ~160 examples of 2·context+1 tokens each; building each value in Python cost
more than reading the rows. Here the token ids, texts and activations of all examples are
gathered at once, and each example's lists are cut from those arrays.

Window activations are stored as float16 (for display: the colour scale). They are returned as
the shortest decimal that reads back as the same float16 (at most 5 significant digits, e.g.
0.1234 rather than 0.12341308593750), so an answer carries exactly the information the index
holds, in about half the characters. Such a value lies within half a float16 step of the stored
float16: 2⁻¹¹ of it (relative), or 2⁻²⁵ (absolute) below 6.1·10⁻⁵ where float16 is subnormal; the
stored float16 is as close to the float32 activation. An example's own ``activation`` is float32
and keeps every digit.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyarrow as pa

from backend.neurons.reader import IndexFiles

_short_lock = threading.Lock()
_short: np.ndarray | None = None


def short_float16_values() -> np.ndarray:
    """[65536] float64: for each float16 bit pattern, the float64 nearest to the shortest decimal
    that reads back as that float16 (NaN for the NaN patterns). Built once (~50 ms)."""
    global _short
    with _short_lock:
        if _short is None:
            patterns = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
            # numpy prints a float16 as its shortest round-trip decimal (Dragon4)
            _short = patterns.astype(str).astype(np.float64)
        return _short


def short_float16(values: np.ndarray) -> np.ndarray:
    """``values`` (float16, any shape) as float64 that print as their shortest float16 decimal."""
    return short_float16_values()[np.ascontiguousarray(values, dtype=np.float16).view(np.uint16)]


def _clean(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _texts(column: pa.ChunkedArray) -> list[str]:
    """A text column as a list; a dictionary column through its indices (converting each value
    of a dictionary array on its own costs more than the rest of the page)."""
    values: list[str] = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            names = chunk.dictionary.to_pylist()
            values += [names[code] for code in chunk.indices.to_numpy(zero_copy_only=False).tolist()]
        else:
            values += chunk.to_pylist()
    return values


def example_blocks(files: IndexFiles, rows: pa.Table, models: list[str]) -> dict[tuple[str, str], list[dict]]:
    """``{(model, side): [EXAMPLE, ...] by rank}`` of one neuron's ``examples`` rows of ``models``.

    EXAMPLE: document, position, activation (float32), tokens / token_ids / activations of the
    window's tokens inside the document, and ``focus``, the example's place in those lists.
    """
    model = _texts(rows.column("model"))
    side = _texts(rows.column("side"))
    rank = rows.column("rank").to_numpy()
    wanted = [i for i, name in enumerate(model) if name in models]
    blocks: dict[tuple[str, str], list[dict]] = {}
    if not wanted:
        return blocks
    # a block's examples by rank (the order of the blocks themselves does not matter)
    kept_rows = [wanted[j] for j in np.argsort(rank[wanted], kind="stable").tolist()]
    take = pa.array(kept_rows, type=pa.int64())
    document = rows.column("document").take(take).to_numpy()  # [examples]
    position = rows.column("position").take(take).to_numpy()  # [examples]
    scores = rows.column("activation").take(take).to_numpy().astype(np.float64)  # [examples]
    activation = scores.tolist() if np.isfinite(scores).all() else [_clean(value) for value in scores.tolist()]
    windows = rows.column("window").take(take).combine_chunks()
    width = windows.type.list_size
    stored = windows.flatten().to_numpy(zero_copy_only=False).reshape(len(kept_rows), width)  # [examples, W] f16
    values = short_float16(stored)  # [examples, W]
    inside = ~np.isnan(values)  # NaN: outside the document
    context = files.manifest["context"]
    flat, offsets = files.document_arrays()
    places = position[:, None] - context + np.arange(width)  # [examples, W] positions in the document
    tokens_at = offsets[document][:, None] + np.where(inside, places, 0)
    token_ids = flat[tokens_at]  # [examples, W]; meaningless where not inside
    vocab = files.vocab_array()  # [vocab + 1] object, the last entry "" for ids outside the vocabulary
    token_ids = np.where(inside, token_ids, 0)
    texts = vocab[np.where((token_ids >= 0) & (token_ids < len(vocab) - 1), token_ids, len(vocab) - 1)]
    focus = inside[:, :context].sum(axis=1).tolist()
    all_ids, all_texts, all_values = token_ids.tolist(), texts.tolist(), values.tolist()
    whole = inside.all(axis=1).tolist()
    inside_rows = inside.tolist()
    documents, positions = document.tolist(), position.tolist()
    for j, i in enumerate(kept_rows):
        ids, words, acts = all_ids[j], all_texts[j], all_values[j]
        if not whole[j]:
            mask = inside_rows[j]
            ids = [value for value, keep in zip(ids, mask, strict=True) if keep]
            words = [value for value, keep in zip(words, mask, strict=True) if keep]
            acts = [value for value, keep in zip(acts, mask, strict=True) if keep]
        blocks.setdefault((model[i], side[i]), []).append({
            "document": documents[j], "position": positions[j], "activation": activation[j],
            "tokens": words, "token_ids": ids, "activations": acts, "focus": focus[j],
        })
    return blocks
