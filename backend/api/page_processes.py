"""Neuron pages built in worker processes, so the server's own threads only do HTTP.

Building a page that is not cached yet takes ~2–3 ms of CPU, most of it Python (plus Parquet and
numpy calls that release the interpreter lock for a few microseconds each). Run in the server's
thread pool, 16 concurrent cold reads make 16 threads and the event loop hand the one lock to
each other hundreds of times per page: measured on 2 cores, 215 context switches and ~8 ms of
server CPU per cold page, a third of it in the kernel's futex and scheduler (docs/neurons.md).
Worker processes each have their own lock, build one page at a time, and return its JSON bytes
(~70 kB through a pipe); the server process awaits them without using a thread. Only bytes cross
the pipe (a JSON request; a tagged answer), nothing is pickled.

The workers are spawned (never forked: the server holds threads and a model), read the index
files only (no model, no jobs), and keep their own open indexes and row-group caches. A worker
that dies (killed, out of memory) is replaced at once; the pages it held answer 500.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

import orjson

from backend.config import Settings
from backend.errors import UserError

log = logging.getLogger("prunelens.api")

_settings: Settings | None = None  # in a worker: the server's settings, given once at its start


def build_page(index_id: str, layer: int, neuron: int, variant: str | None) -> bytes:
    """A neuron page as the JSON bytes the API sends (runs in a worker)."""
    from backend.api.neuron_reads import json_bytes
    from backend.neurons.queries import neuron_page

    return json_bytes(neuron_page(index_id, layer, neuron, variant=variant, settings=_settings))


# An answer is one tag byte and its body: the page, or a failure as JSON {"status", "message"}.
PAGE, FAILED = b"P", b"F"


def serve_pages(connection: Connection, settings: Settings) -> None:
    """A worker's life: one JSON request ``[index, layer, neuron, variant]`` at a time from
    ``connection``, answered with PAGE + the page's bytes or FAILED + {"status", "message"} (a
    UserError keeps its HTTP status, anything else is a 500); an empty request stops it."""
    from backend.process_setup import configure_process

    global _settings
    configure_process()  # a worker is a process start: the same allocator setting as the server
    _settings = settings
    import backend.neurons.queries  # noqa: F401  # the page code's imports (seconds) before the first page

    while True:
        try:
            request = connection.recv_bytes()
        except (EOFError, OSError):  # the server went away
            return
        if not request:
            return
        try:
            answer = PAGE + build_page(*orjson.loads(request))
        except UserError as exc:
            answer = FAILED + orjson.dumps({"status": exc.status_code, "message": str(exc)})
        except Exception as exc:  # noqa: BLE001  # any other failure is a 500 in the server
            answer = FAILED + orjson.dumps({"status": 500, "message": f"neuron page failed: {exc!r}"})
        connection.send_bytes(answer)


class _Worker:
    def __init__(self, settings: Settings) -> None:
        context = multiprocessing.get_context("spawn")  # never fork: the server holds threads and a model
        self.connection, theirs = context.Pipe()
        self.process: BaseProcess = context.Process(target=serve_pages, args=(theirs, settings),
                                                    name="prunelens-pages", daemon=True)
        self.process.start()
        theirs.close()
        self.asked: deque[asyncio.Future] = deque()  # sent, not answered yet: answers come in order

    def stop(self) -> None:
        try:
            self.connection.send_bytes(b"")
        except OSError:
            pass
        self.connection.close()
        self.process.join(timeout=2)
        if self.process.is_alive():
            self.process.kill()


class PageProcesses:
    """``processes`` page workers, each on its own pipe, driven by the event loop without a thread:
    a request waits in one FIFO line (a later request never overtakes it), goes to the worker with
    the fewest requests in hand (at most ``DEPTH``, so a worker starts its next page as soon as it
    sends one, without waiting for this process), and the loop reads each answer when the worker's
    pipe is readable."""

    DEPTH = 2

    def __init__(self, settings: Settings, processes: int) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        self.settings, self.processes = settings, processes
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._line: deque[tuple[tuple, asyncio.Future]] = deque()

    def start(self) -> None:
        """Spawn the workers now (each imports the page code: seconds) instead of on the first page."""
        while len(self._workers) < self.processes:
            self._workers.append(_Worker(self.settings))

    async def page(self, index_id: str, layer: int, neuron: int, variant: str | None) -> bytes:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self.start()
            self._loop = loop
            for worker in self._workers:
                self._listen(worker)
        answer: asyncio.Future = loop.create_future()
        self._line.append(((index_id, layer, neuron, variant), answer))
        self._dispatch()
        message: bytes = await answer
        if message.startswith(PAGE):
            return message[len(PAGE):]
        failure = orjson.loads(message[len(FAILED):])
        if 400 <= failure["status"] < 500:
            error = UserError(failure["message"])
            error.status_code = failure["status"]  # NotFoundError's 404, ConflictError's 409, ...
            raise error
        raise RuntimeError(failure["message"])

    def _listen(self, worker: _Worker) -> None:
        descriptor = worker.connection.fileno()
        assert self._loop is not None
        self._loop.add_reader(descriptor, self._answered, worker)
        # add_reader may make it non-blocking (uvloop); recv and send move whole messages
        os.set_blocking(descriptor, True)

    def _dispatch(self) -> None:
        while self._line and self._workers:
            worker = min(self._workers, key=lambda each: len(each.asked))
            if len(worker.asked) >= self.DEPTH:
                return
            request, answer = self._line.popleft()
            if answer.done():  # its client went away
                continue
            worker.asked.append(answer)
            worker.connection.send_bytes(orjson.dumps(request))  # a few bytes: the pipe takes them at once

    def _answered(self, worker: _Worker) -> None:
        try:
            message = worker.connection.recv_bytes()  # the worker writes its whole answer at once
        except (EOFError, OSError):
            self._replace(worker)
            return
        answer = worker.asked.popleft()
        if not answer.done():
            answer.set_result(message)
        self._dispatch()

    def _replace(self, worker: _Worker) -> None:
        log.error("a neuron page worker exited; starting a new one")
        assert self._loop is not None
        self._loop.remove_reader(worker.connection.fileno())
        worker.connection.close()
        worker.process.kill()
        for answer in worker.asked:  # their pages are lost: a 500 each, the client may retry
            if not answer.done():
                answer.set_result(FAILED + orjson.dumps(
                    {"status": 500, "message": "the neuron page worker exited; retry the request"}))
        self._workers.remove(worker)
        fresh = _Worker(self.settings)
        self._workers.append(fresh)
        self._listen(fresh)
        self._dispatch()

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(worker.connection.fileno())
            worker.stop()
        self._loop = None
