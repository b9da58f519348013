"""NSA step 1: the words of a text that matter for the task, and the tokens they cover.

Words come from (in order of precedence) the user, the model's own answer to a few-shot
chain-of-thought prompt, or a documented fallback attribution of the label's log-prob margin
(Captum's integrated gradients by default, see attribution.py). Every result records its
source and the raw generation. The model answer is parsed defensively: small instruct models
echo the placeholder or the worked example, loop on one word, list stopwords or names, or
copy the whole text.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from backend.data.encoding import EncodedText, encode_text
from backend.errors import UserError
from backend.nsa.attribution import (
    FALLBACK_METHOD,
    IG_STEPS,
    TokenAttribution,
    fallback_word_count,
    token_attribution,
)
from backend.nsa.probe import encode_probe
from backend.nsa.tasks import TaskSpec

if TYPE_CHECKING:
    from backend.models.loader import LoadedModel

MAX_WORDS = 10  # more than this is not a selection any more
MAX_PHRASE_WORDS = 4  # longer "phrases" are copied text, not an answer
COPY_SHARE = 0.6  # a list covering this share of the text's content words copies the text
COPY_MIN_CONTENT_WORDS = 6  # ... judged only on texts with at least this many content words
LOOP_REPEATS = 3  # "but, but, but": a word listed this often is a generation loop

_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_BRACKETED = re.compile(r"\[([^\[\]]*)(?:\]|$)")  # a closed list, or one cut off at the end
_QUOTED = re.compile(r'["“”]([^"“”\n]{1,80})["“”]')  # double quotes only: ' clashes with "it 's"
_ENUMERATED = re.compile(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+(.+)$", re.MULTILINE)
_PLACEHOLDER = re.compile(r"^(?:word\s*\d*|words?|\.{2,}|…|etc\.?|x)$", re.IGNORECASE)
_ITEM_SPLIT = re.compile(r"[,;|\n]+")
_STRIP_CHARS = " \t\"'“”‘’`*_()[]{}<>.:!?-–—"


@dataclass
class WordLocation:
    """One influential word or phrase and where it is in the text."""

    word: str  # as it first appears in the text
    spans: list[tuple[int, int]]  # character spans [start, end) of every whole-word occurrence
    token_indices: list[int]  # tokens overlapping any occurrence, ascending

    def to_json(self) -> dict:
        return {"word": self.word, "spans": [list(s) for s in self.spans], "tokens": self.token_indices}


@dataclass
class InfluentialWords:
    """Step 1's answer for one text."""

    source: str  # "user", "model" or "fallback:<method>"
    words: list[WordLocation]
    raw_generation: str | None = None
    rejected: list[dict] = field(default_factory=list)  # {"word", "reason"} from the parser
    missing: list[str] = field(default_factory=list)  # requested words absent from the text
    note: str | None = None  # why the fallback ran, or other caveats
    attribution: list[dict] | None = None  # fallback only: {"word", "score"} for every candidate

    def token_mask(self, n_tokens: int) -> torch.Tensor:
        """``[tokens]`` bool: True on tokens of influential words."""
        mask = torch.zeros(n_tokens, dtype=torch.bool)
        for location in self.words:
            mask[location.token_indices] = True
        return mask

    def to_json(self) -> dict:
        return {
            "source": self.source,
            "words": [w.to_json() for w in self.words],
            "raw_generation": self.raw_generation,
            "rejected": self.rejected,
            "missing": self.missing,
            "note": self.note,
            "attribution": self.attribution,
        }


# ----------------------------------------------------------------------------- locating words


def find_word_spans(text: str, word: str) -> list[tuple[int, int]]:
    """Whole-word, case-insensitive occurrences of ``word`` (a word or phrase) in ``text``."""
    parts = word.split()
    if not parts:
        return []
    body = r"\s+".join(re.escape(part) for part in parts)
    # Boundaries by lookaround so that words starting/ending in punctuation ("n't") still match.
    pattern = re.compile(rf"(?<!\w){body}(?!\w)", re.IGNORECASE)
    return [match.span() for match in pattern.finditer(text)]


def tokens_for_span(offsets: list[tuple[int, int]], span: tuple[int, int]) -> list[int]:
    """Indices of tokens whose character span overlaps ``span``.

    Tokens may carry the preceding space (" slow") and byte-level pieces of one character
    share its span; special tokens have an empty span and never match.
    """
    start, end = span
    return [i for i, (t_start, t_end) in enumerate(offsets) if t_start < end and t_end > start]


def locate_words(
    words: list[str], text: str, offsets: list[tuple[int, int]], *, shift: int = 0
) -> tuple[list[WordLocation], list[str]]:
    """Map words to their spans and tokens; words with no (kept) occurrence are returned as missing.

    ``shift`` is added to text offsets before they are compared with token ``offsets`` (for a
    text embedded in a prompt). Duplicates (case-insensitive) are kept once.
    """
    found: list[WordLocation] = []
    missing: list[str] = []
    seen: set[str] = set()
    for word in words:
        key = " ".join(word.lower().split())
        if not key or key in seen:
            continue
        seen.add(key)
        spans = find_word_spans(text, word)
        tokens = sorted({t for s, e in spans for t in tokens_for_span(offsets, (s + shift, e + shift))})
        if not tokens:  # absent, or present only in the part cut off by truncation
            missing.append(word)
            continue
        kept_spans = [(s, e) for s, e in spans if tokens_for_span(offsets, (s + shift, e + shift))]
        found.append(WordLocation(text[kept_spans[0][0] : kept_spans[0][1]], kept_spans, tokens))
    return found, missing


# ----------------------------------------------------------------------------- parsing


def _clean_item(item: str) -> str:
    item = re.sub(r"^\s*(?:[-*•]|\d{1,2}[.)])\s+", "", item)  # bullets and numbering
    return " ".join(item.strip(_STRIP_CHARS).split())


def _candidate_groups(raw: str) -> list[list[str]]:
    """Candidate items, grouped by how confidently the text is an answer list (best first)."""
    groups: list[list[str]] = []
    lists = [content for content in _BRACKETED.findall(raw)]
    items = [_clean_item(piece) for content in lists for piece in _ITEM_SPLIT.split(content)]
    groups.append([item for item in items if item])
    groups.append([_clean_item(line) for line in _ENUMERATED.findall(raw)])
    groups.append([_clean_item(quoted) for quoted in _QUOTED.findall(raw)])
    # Last resort: the whole answer as a comma/line separated list ("slow, boring").
    groups.append([_clean_item(piece) for piece in _ITEM_SPLIT.split(raw)])
    return [[item for item in group if item] for group in groups]


def _is_name(word: str, text: str) -> bool:
    """Capitalised at every occurrence, and at least once where a sentence does not start."""
    spans = find_word_spans(text, word)
    if not spans or " " in word.strip():
        return False
    if not all(text[s].isupper() for s, _ in spans):
        return False
    return any(not re.search(r"(?:^|[.!?:]\s*|\n\s*)$", text[:s].rstrip(" ")) for s, _ in spans)


def _trim_stopwords(phrase: str, task: TaskSpec) -> str:
    parts = phrase.split()
    while parts and task.is_stopword(parts[0]):
        parts.pop(0)
    while parts and task.is_stopword(parts[-1]):
        parts.pop()
    return " ".join(parts)


def _judge(candidate: str, text: str, task: TaskSpec, counts: Counter) -> tuple[list[str], list[dict]]:
    """Keep or reject one candidate: (kept words, rejections with reasons)."""
    lowered = candidate.lower()
    if not _WORD.search(candidate):
        return [], []
    if _PLACEHOLDER.match(candidate):
        return [], [{"word": candidate, "reason": "placeholder"}]
    if counts[lowered] >= LOOP_REPEATS:
        return [], [{"word": candidate, "reason": "repetition loop"}]
    if len(candidate.split()) > MAX_PHRASE_WORDS:
        return [], [{"word": candidate, "reason": "long phrase (copied text)"}]
    trimmed = _trim_stopwords(candidate, task)
    if not trimmed:
        return [], [{"word": candidate, "reason": "stopword"}]
    if not find_word_spans(text, trimmed):
        if len(trimmed.split()) > 1:  # a phrase the text does not have: try its words one by one
            kept, rejected = [], []
            for part in trimmed.split():
                part_kept, part_rejected = _judge(part, text, task, counts)
                kept += part_kept
                rejected += part_rejected
            return kept, rejected
        echoed = trimmed.lower() in {w.lower() for w in task.example_words}
        return [], [{"word": candidate, "reason": "worked-example echo" if echoed else "not in text"}]
    if task.names_are_noise and _is_name(trimmed, text):
        return [], [{"word": candidate, "reason": "name"}]
    return [trimmed], []


def parse_generation(raw: str | None, text: str, task: TaskSpec) -> tuple[list[str], list[dict]]:
    """Influential words from a model's free-form answer: (kept words, rejected with reasons).

    Tries, in order, bracketed lists (also one cut off by the token limit), bulleted or
    numbered lines, quoted words, then the whole answer split on commas and newlines; the
    first kind that yields a usable word wins. Kept words occur in ``text`` as whole words
    (case-insensitive), are not stopwords, names (for tasks where names are noise), the
    placeholder, a repetition loop or long copied phrases; at most MAX_WORDS are kept, and
    a list that covers most of the text's content words is rejected as a copy of the text.
    """
    if not raw or not raw.strip():
        return [], []
    all_rejected: list[dict] = []
    for group in _candidate_groups(raw):
        counts = Counter(item.lower() for item in group)
        kept: list[str] = []
        for candidate in group:
            words, rejected = _judge(candidate, text, task, counts)
            all_rejected += rejected
            for word in words:
                if word.lower() not in {k.lower() for k in kept}:
                    kept.append(word)
        if kept:
            content = {w.lower() for w in _WORD.findall(text) if not task.is_stopword(w)}
            covered = {part.lower() for word in kept for part in word.split()} & content
            if len(content) >= COPY_MIN_CONTENT_WORDS and len(covered) >= COPY_SHARE * len(content):
                all_rejected += [{"word": w, "reason": "list copies the text"} for w in kept]
                continue
            all_rejected += [{"word": w, "reason": f"beyond the first {MAX_WORDS}"} for w in kept[MAX_WORDS:]]
            return kept[:MAX_WORDS], _dedupe(all_rejected)
    return [], _dedupe(all_rejected)


def _dedupe(rejected: list[dict]) -> list[dict]:
    seen, unique = set(), []
    for row in rejected:
        key = (row["word"].lower(), row["reason"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


# ----------------------------------------------------------------------------- generation


def step1_prompt(tokenizer, text: str, task: TaskSpec) -> str:
    """The few-shot chain-of-thought prompt: instruction, one worked example, then the text."""
    example_answer = (
        f"Reasoning: {task.example_reasoning}\nWords: [{','.join(task.example_words)}]"
    )
    if getattr(tokenizer, "chat_template", None):
        messages = [
            {"role": "user", "content": f"{task.instruction}\n\nText: {task.example_text}"},
            {"role": "assistant", "content": example_answer},
            {"role": "user", "content": f"{task.instruction}\n\nText: {text}"},
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (
        f"{task.instruction}\n\nText: {task.example_text}\n{example_answer}\n\n"
        f"{task.instruction}\n\nText: {text}\nReasoning:"
    )


MIN_TEXT_TOKENS = 8  # below this much room for the text, step 1 is not worth asking


@torch.inference_mode()
def generate_answer(loaded: LoadedModel, text: str, task: TaskSpec, *, max_new_tokens: int = 48) -> str | None:
    """The model's greedy answer to the step-1 prompt (only the new tokens, decoded).

    A text too long for the prompt is cut from its end; None when the prompt itself leaves
    no room for the text in the model's context.
    """
    tokenizer = loaded.tokenizer
    # The prompt's own tokens without the text, to know how much of the text fits.
    overhead = len(tokenizer(step1_prompt(tokenizer, "", task), add_special_tokens=True)["input_ids"])
    budget = loaded.max_length - max_new_tokens - overhead - 2  # 2: tokens merging at the seams
    if budget < MIN_TEXT_TOKENS:
        return None
    fitted = encode_text(tokenizer, text, budget)
    if fitted.truncated:
        text = text[: fitted.offsets[-1][1]]
    prompt = step1_prompt(tokenizer, text, task)
    # The chat template already holds any special tokens; plain prompts get the usual ones.
    ids = tokenizer(prompt, add_special_tokens=not getattr(tokenizer, "chat_template", None))["input_ids"]
    input_ids = torch.tensor([ids], device=loaded.device)  # [1, prompt_tokens]
    # generate() comes from GenerationMixin, which every *ForCausalLM class mixes in.
    output = loaded.model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)


# ----------------------------------------------------------------------------- fallback


def fallback_scores(
    loaded: LoadedModel, text: str, task: TaskSpec, label_index: int | None = None, *,
    method: str = FALLBACK_METHOD, n_steps: int = IG_STEPS,
) -> tuple[list[dict], TokenAttribution]:
    """The fallback's word ranking: each content word of ``text`` scored by ``method`` (attribution.py).

    Returns ``({"word", "score", "attribution"} for each distinct content word, best first; the
    token attribution over the probe prompt)``. An occurrence's attribution is the sum of its
    tokens' attributions (signed: > 0 pushes towards the label); a word's ``attribution`` is
    that of its occurrence with the largest magnitude and its ``score`` that magnitude, so
    words pushing either way count. Without a gold label the model's own prediction is explained.
    """
    probe = encode_probe(loaded.tokenizer, text, task, loaded.max_length)
    attributed = token_attribution(loaded, probe, len(text), label_index, method=method, n_steps=n_steps)
    scores: dict[str, dict] = {}
    for match in _WORD.finditer(text):
        word = match.group(0)
        if task.is_stopword(word) or word.isdigit():
            continue
        span = (match.start() + probe.text_start, match.end() + probe.text_start)  # in the probe prompt
        tokens = tokens_for_span(probe.encoded.offsets, span)
        if not tokens:  # cut off by truncation
            continue
        value = float(attributed.values[tokens].sum())
        entry = scores.setdefault(word.lower(), {"word": word, "score": abs(value), "attribution": value})
        if abs(value) > entry["score"]:
            entry.update(score=abs(value), attribution=value)
    ranked = sorted(scores.values(), key=lambda row: -row["score"])
    return ranked, attributed


# ----------------------------------------------------------------------------- step 1


def influential_words(
    loaded: LoadedModel,
    encoded: EncodedText,
    task: TaskSpec,
    *,
    user_words: list[str] | None = None,
    explainer: LoadedModel | None = None,
    max_new_tokens: int = 48,
    label_index: int | None = None,
    fallback_method: str = FALLBACK_METHOD,
) -> InfluentialWords:
    """Step 1 for one text (``encoded`` is the dense model's tokenization of it).

    User words override the model; the model used to generate is ``explainer`` if given, else
    the dense model itself; when nothing usable comes back, ``fallback_method`` (attribution.py)
    chooses.
    """
    text = encoded.text
    rejected: list[dict] = []
    missing: list[str] = []
    raw, reason = None, "no usable words in the model's answer"
    if user_words:
        located, missing = locate_words(user_words, text, encoded.offsets)
        if located:
            return InfluentialWords("user", located, missing=missing)
        reason = "none of the given words occur in this text"
    else:
        raw = generate_answer(explainer or loaded, text, task, max_new_tokens=max_new_tokens)
        if raw is None:
            reason = "the step-1 prompt does not fit the model's context"
        kept, rejected = parse_generation(raw, text, task)
        located, cut_off = locate_words(kept, text, encoded.offsets)
        rejected += [{"word": word, "reason": "beyond the truncated text"} for word in cut_off]
        if located:
            return InfluentialWords("model", located, raw_generation=raw, rejected=rejected)

    ranked, attributed = fallback_scores(loaded, text, task, label_index, method=fallback_method)
    chosen = [row["word"] for row in ranked[: fallback_word_count(len(ranked))]]
    located, _ = locate_words(chosen, text, encoded.offsets)
    if not located:
        raise UserError("the text has no content words to attribute (only stopwords or numbers?)")
    label = task.label_words[attributed.label_index].strip()
    return InfluentialWords(
        f"fallback:{attributed.method}", located, raw_generation=raw, rejected=rejected, missing=missing,
        note=f"{reason}; words chosen by {attributed.describe()} on the margin of '{label}'",
        attribution=ranked,
    )
