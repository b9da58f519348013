"""Cached reads of neuron indexes for the API: answers kept as JSON bytes, NSA selections per neuron.

An index never changes once written (its id names its request, models and code), so any answer
computed from it can be kept: the neuron page of (index, layer, neuron, variant) is read from
Parquet once and then served from memory as the bytes that were sent the first time. The index
listing is kept until the indexes folder changes (a finished build renames its folder into it).
No model is loaded on these paths.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import orjson

MEMORY_ENTRIES = 4096  # neuron pages of ~30 kB: ~120 MB at most


def finite(value):
    """JSON has no NaN or infinity: such floats (a constant neuron's correlation) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def json_bytes(value) -> bytes:
    """Compact UTF-8 JSON, NaN and infinities as null. orjson writes a neuron page about five
    times faster than the json module (same values: floats as their shortest round-trip decimal)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):  # e.g. an integer beyond 64 bits: the json module copes
        pass
    try:  # most answers hold no NaN: one pass of the encoder instead of a copy first
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError:
        text = json.dumps(finite(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode()


class AnswerCache:
    """A bounded LRU of serialized answers; ``get_or_compute`` runs ``compute`` once per key at a
    time (concurrent first requests for one neuron wait for the one read instead of repeating it)."""

    def __init__(self, entries: int = MEMORY_ENTRIES):
        self.entries = entries
        self._answers: OrderedDict[tuple, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._pending: dict[tuple, threading.Lock] = {}
        self._building: dict[tuple, asyncio.Task] = {}  # get_or_build's, touched by the event loop only

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            answer = self._answers.get(key)
            if answer is not None:
                self._answers.move_to_end(key)
            return answer

    def put(self, key: tuple, answer: bytes) -> None:
        with self._lock:
            self._answers[key] = answer
            self._answers.move_to_end(key)
            while len(self._answers) > self.entries:
                self._answers.popitem(last=False)

    async def get_or_build(self, key: tuple, build: Callable[[], Awaitable[bytes]]) -> bytes:
        """The kept answer, else the JSON bytes ``build()`` gives, awaited once per key: concurrent
        first requests await the same build, and a client that goes away does not cancel it."""
        answer = self.get(key)
        if answer is not None:
            return answer
        task = self._building.get(key)
        if task is None:
            async def run() -> bytes:
                built = await build()
                self.put(key, built)
                return built

            task = asyncio.ensure_future(run())
            self._building[key] = task
            task.add_done_callback(lambda _: self._building.pop(key, None))
        return await asyncio.shield(task)

    def get_or_compute(self, key: tuple, compute: Callable[[], object]) -> bytes:
        answer = self.get(key)
        if answer is not None:
            return answer
        with self._lock:
            pending = self._pending.setdefault(key, threading.Lock())
        with pending:
            answer = self.get(key)
            if answer is None:
                answer = json_bytes(compute())
                self.put(key, answer)
        with self._lock:
            self._pending.pop(key, None)
        return answer


# ----------------------------------------------------------------------------- NSA selections


def _held_out(result: dict) -> list[dict]:
    rows = []
    for comparison in result.get("comparison", []):
        held = (comparison.get("statistics") or {}).get("held_out")
        if held:
            excess = held["excess_drop"]
            rows.append({"variant": comparison["variant"], "mean": excess.get("mean"), "low": excess.get("low"),
                         "high": excess.get("high"), "verdict": held.get("verdict")})
    return rows


def selections_of(summary: dict, body: bytes) -> dict[tuple[int, int], dict]:
    """``{(layer, neuron): selection}`` of one stored NSA result: every neuron it selected."""
    envelope = json.loads(body)
    result = envelope.get("result") or {}
    held_out = _held_out(result)
    selected = {}
    for neuron in result.get("neurons", []):
        words = list(dict.fromkeys(row["word"] for row in neuron.get("attributed_words", [])))[:6]
        selected[(int(neuron["layer"]), int(neuron["index"]))] = {
            "result": summary["id"], "created_at": summary["created_at"], "preview": summary["preview"],
            "n_texts": summary["n_texts"], "task": summary["task"], "rank": int(neuron["rank"]),
            "score": float(neuron["score"]), "words": words, "held_out": held_out,
        }
    return selected


class NsaSelections:
    """Which stored NSA results selected a neuron. Results are immutable by id, so each is parsed
    once; the listing is read again on every call (one SQLite query)."""

    def __init__(self):
        self._parsed: dict[str, dict[tuple[int, int], dict]] = {}
        self._lock = threading.Lock()

    def of_neuron(self, store, model: str, layer: int, neuron: int, limit: int = 1000) -> list[dict]:
        found = []
        for summary in store.list(model=model, limit=limit):
            with self._lock:
                parsed = self._parsed.get(summary["id"])
            if parsed is None:
                body = store.get_bytes(summary["id"])
                parsed = selections_of(summary, body) if body is not None else {}
                with self._lock:
                    self._parsed[summary["id"]] = parsed
            if (layer, neuron) in parsed:
                found.append(parsed[(layer, neuron)])
        return found
