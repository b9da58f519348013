"""The text of one split of a set: its documents, how they join into one text, their byte sizes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """The documents of one split, how to join them into one text, and their UTF-8 sizes.

    ``documents`` is a list, or for large hub sets a lazy Arrow column (same indexing), so
    that a C4 shard is not copied into Python strings to draw 128 windows from it.
    """

    documents: Sequence[str]
    joiner: str  # what goes between documents when they are read as one text
    byte_lengths: np.ndarray  # [documents] UTF-8 bytes of each document

    def __len__(self) -> int:
        return len(self.documents)

    def joined_text(self) -> str:
        return self.joiner.join(self.documents)


def corpus_from_list(documents: Sequence[str], joiner: str = "\n\n") -> TextCorpus:
    documents = list(documents)
    lengths = np.fromiter(
        (len(text.encode("utf-8")) for text in documents), dtype=np.int64, count=len(documents)
    )
    lengths.flags.writeable = False  # cached and shared: nobody may change it
    return TextCorpus(documents, joiner, lengths)
