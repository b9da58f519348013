"""The index corpus: documents as token ids (start token first), the profile tokens, the batch plan.

Documents are numbered in corpus order. Each is encoded as NSA encodes a text (the tokenizer's
BOS, or its EOS, in front; never counted in any statistic) and cut at ``max_length``. The last
document is cut so that the corpus holds exactly ``tokens`` counted tokens (fewer only when the
source runs out). The "mix" corpus interleaves five offline sets, one document of each in turn,
each set shuffled by the seed, so any prefix of it is a balanced sample of all five.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from backend.data.encoding import encode_for_attribution
from backend.data.sources import FILE_PREFIX, load_documents
from backend.errors import UserError

MIX_SETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("lambada", ("lambada",)),  # novel passages (calibration split: the held-out ones excluded)
    ("imdb", ("imdb",)),  # movie reviews
    ("sst2", ("sst2",)),  # movie-review sentences
    ("arc", ("arc_easy", "arc_challenge")),  # science questions with choices and answer
    ("boolq", ("boolq",)),  # passage, question, yes/no answer
)
MIX_DESCRIPTION = (
    "mix: lambada passages, imdb reviews, sst2 sentences, arc questions, boolq passages, "
    "one document of each in turn, each set shuffled with the seed"
)
# A top example's identity: document << POSITION_BITS | position. Ties in activation are broken by
# the smaller key, so the kept examples do not depend on batch or shard order.
POSITION_BITS = 20
KEY_EMPTY = torch.iinfo(torch.int64).max


@dataclass
class IndexCorpus:
    description: str
    documents: list[list[int]]  # per document: token ids, start token first

    @property
    def counted_tokens(self) -> int:
        return sum(len(ids) - 1 for ids in self.documents)

    def profile_token_ids(self, count: int) -> list[int]:
        """The ``count`` most frequent counted token ids (ties: smaller id first)."""
        frequency = Counter(token for ids in self.documents for token in ids[1:])
        ranked = sorted(frequency.items(), key=lambda item: (-item[1], item[0]))
        return [token for token, _ in ranked[:count]]


def _mix_documents(seed: int) -> Iterator[str]:
    queues = []
    for offset, (_name, sets) in enumerate(MIX_SETS):
        documents = [text for name in sets for text in load_documents(name)]
        random.Random(seed * 1000 + offset).shuffle(documents)
        queues.append(iter(documents))
    while queues:
        for queue in list(queues):
            text = next(queue, None)
            if text is None:
                queues.remove(queue)
            else:
                yield text


def corpus_texts(corpus: str, seed: int) -> tuple[str, Iterator[str]]:
    """A description of the corpus and its texts, in corpus order."""
    name = corpus.strip()
    if name.lower() == "mix":
        return MIX_DESCRIPTION + f" (seed {seed})", _mix_documents(seed)
    if name.lower().startswith(FILE_PREFIX):
        from backend.data.user_files import read_user_file

        path = name[len(FILE_PREFIX):].strip()
        if not path:
            raise UserError("file: needs a path, e.g. file:my_texts.txt")
        records = read_user_file(path)
        return f"file {path} ({len(records)} texts, in file order)", iter([r["text"] for r in records])
    texts = load_documents(name)
    return f"{name} (calibration split, in set order)", iter(texts)


def encode_corpus(tokenizer, corpus: str, tokens: int, max_length: int, seed: int) -> IndexCorpus:
    """Encode documents in corpus order until ``tokens`` counted tokens (the last one cut)."""
    description, texts = corpus_texts(corpus, seed)
    documents: list[list[int]] = []
    total = 0
    for text in texts:
        if total >= tokens:
            break
        if not text or not text.strip():
            continue
        ids = encode_for_attribution(tokenizer, text, max_length).input_ids
        counted = min(len(ids) - 1, tokens - total)
        if counted <= 0:
            continue
        documents.append(list(ids[: counted + 1]))
        total += counted
    if not documents:
        raise UserError(f"corpus {corpus!r} has no text to index")
    return IndexCorpus(description, documents)


@dataclass
class Batch:
    """Documents run together: one forward per model, right-padded to ``length``."""

    documents: list[int]  # document numbers, one per row
    half: int  # document parity: every document of a batch is in the same split half
    length: int


def plan_batches(documents: Sequence[list[int]], numbers: Sequence[int], batch_tokens: int) -> list[Batch]:
    """Group ``numbers`` into batches of at most ``batch_tokens`` padded tokens (one document
    at least): per parity, longest first, so padding stays small. Order does not matter for
    the result (every statistic merges exactly)."""
    batches = []
    for half in (0, 1):
        ordered = sorted((n for n in numbers if n % 2 == half), key=lambda n: (-len(documents[n]), n))
        start = 0
        while start < len(ordered):
            length = len(documents[ordered[start]])
            rows = max(1, batch_tokens // length)
            chosen = ordered[start:start + rows]
            batches.append(Batch(sorted(chosen), half, length))
            start += rows
    return batches


@dataclass
class BatchTensors:
    """A batch on the model's device. "Counted" tokens are every position but the start token
    and the padding; statistics see only those, as ``[counted, ...]`` rows in (row, position) order."""

    input_ids: torch.Tensor  # [rows, length]
    attention_mask: torch.Tensor  # [rows, length]
    flat: torch.Tensor  # [counted] index into the flattened [rows * length] positions
    position: torch.Tensor  # [counted] position in its document
    doc_length: torch.Tensor  # [counted] length of its document (start token included)
    keys: torch.Tensor  # [counted] document << POSITION_BITS | position
    token_ids: torch.Tensor  # [counted]
    half: int


def batch_tensors(batch: Batch, documents: Sequence[list[int]], pad_id: int, device: torch.device) -> BatchTensors:
    rows, length = len(batch.documents), batch.length
    input_ids = torch.full((rows, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((rows, length), dtype=torch.long)
    flat, position, doc_length, keys = [], [], [], []
    for row, number in enumerate(batch.documents):
        ids = documents[number]
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        positions = torch.arange(1, len(ids))
        flat.append(row * length + positions)
        position.append(positions)
        doc_length.append(torch.full_like(positions, len(ids)))
        keys.append((number << POSITION_BITS) | positions)
    flat_t = torch.cat(flat)
    return BatchTensors(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        flat=flat_t.to(device),
        position=torch.cat(position).to(device),
        doc_length=torch.cat(doc_length).to(device),
        keys=torch.cat(keys).to(device),
        token_ids=input_ids.view(-1)[flat_t].to(device),
        half=batch.half,
    )
