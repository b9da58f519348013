"""Benchmark: our evaluation (lm-eval on the in-memory model, results stored) against a plain batched
forward over the same token sequences, in examples per second; prints the ratio.

    python bench/evaluation.py [--model M] [--task sst2] [--limit 32] [--batch-size 16]

The plain forward runs the distinct (context + continuation) token sequences that lm-eval scores
for these examples, right-padded in batches of the same size, and does nothing else. Distinct,
because lm-eval's logits cache scores all one-token continuations of a context with a single
forward (their sequences minus the last token are identical): SST-2's " negative"/" positive"
cost one forward per example, not two. The ratio is what lm-eval's request building, sorting,
log-softmax and bookkeeping, and our store, cost on top of the bare forwards.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def lm_eval_sequences(loaded, task_name: str, limit: int) -> list[list[int]]:
    """Token ids of every request lm-eval builds for the first ``limit`` documents, split into
    context and continuation as HFLM does (the model sees all tokens but the last)."""
    from backend.evaluation.registry import choose_sources, prepared_tasks

    with prepared_tasks(choose_sources([task_name])) as prepared:
        task = prepared.load(task_name)
        task.set_config(key="num_fewshot", value=0)
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        sequences = []
        for instance in task.instances:
            context, continuation = instance.arguments
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            whole = loaded.tokenizer.encode(context + continuation)
            sequences.append(whole[:-1])
    return sequences


def plain_forward_seconds(loaded, sequences: list[list[int]], batch_size: int) -> float:
    import torch

    pad = loaded.tokenizer.pad_token_id or 0
    ordered = sorted(sequences, key=len, reverse=True)  # as lm-eval orders its requests
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(ordered), batch_size):
            batch = ordered[start:start + batch_size]
            width = len(batch[0])
            ids = torch.full((len(batch), width), pad, dtype=torch.long)  # [batch, tokens]
            for row, tokens in enumerate(batch):
                ids[row, :len(tokens)] = torch.tensor(tokens)
            # Right padding needs no attention mask for causal scoring (as in HFLM): the pads
            # come after every real token, so no real token attends to them.
            loaded.model(input_ids=ids.to(loaded.device))
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    from backend.evaluation.runner import evaluate
    from backend.evaluation.store import ResultsStore
    from backend.models.loader import load_model

    loaded = load_model(args.model)
    sequences = lm_eval_sequences(loaded, args.task, args.limit)
    plain_forward_seconds(loaded, sequences[: args.batch_size], args.batch_size)  # warm-up

    distinct = [list(s) for s in dict.fromkeys(tuple(s) for s in sequences)]
    plain_before = plain_forward_seconds(loaded, distinct, args.batch_size)
    with tempfile.TemporaryDirectory() as folder:
        store = ResultsStore(Path(folder) / "results.db")
        started = time.perf_counter()
        [result] = evaluate(loaded, args.task, limit=args.limit, batch_size=args.batch_size, store=store)
        ours = time.perf_counter() - started
    # Before and after ours, averaged: the load of a shared machine drifts.
    plain = (plain_before + plain_forward_seconds(loaded, distinct, args.batch_size)) / 2

    examples = result.stored.n_examples
    tokens = sum(len(s) for s in distinct)
    print(f"model {loaded.name} on {loaded.device}, task {args.task}, {examples} examples, "
          f"{len(sequences)} requests = {len(distinct)} distinct forwards, {tokens} tokens, "
          f"batch {args.batch_size}")
    print(f"ours (lm-eval + store): {ours:.2f} s = {examples / ours:.2f} examples/s "
          f"({result.stored.metrics.get('acc,none')} acc)")
    print(f"plain batched forward : {plain:.2f} s = {examples / plain:.2f} examples/s")
    print(f"ratio ours/plain examples/s: {plain / ours:.3f}")
    return 0


if __name__ == "__main__":
    from backend.process_setup import configure_process

    configure_process()  # a benchmark is a process start, like the CLI
    sys.exit(main())
