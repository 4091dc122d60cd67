"""Conversations of the live listener service in worker processes, one per CPU core.

Why processes: a small network spends most of each denoiser call in Python (operator dispatch), under
the GIL. In one process, two conversations on two cores took 639 ms per window (p50) where one alone
takes 326 ms (demo model, M = 10, 50 steps, 2 cores): the threads mostly waited for each other. Here each
worker process has its own copy of the network, its own interpreter and one torch thread; a conversation
lives in one worker from start to end, and the worker batches the denoiser calls of its conversations
(:class:`~reactdiff.serve.BatchingDenoiser`). The service's event loop only moves messages.

Parent and worker speak over a pipe, one request per window: ``("open", id, options)``, ``("step", id,
face, audio)``, ``("close", id)``; the worker answers ``("opened", id)``, ``("reactions", id, array,
frame)``, ``("rejected", id, message)`` or ``("failed", id, message)``.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from reactdiff.online import NonFiniteOutput, RejectedInput

READY_TIMEOUT_S = 300.0


class ConversationFailed(RuntimeError):
    """The worker could not open or continue a conversation (a bug, or the worker died); the others go on."""


def _worker_main(conn, denoiser, stats, encoder, device: str, window: int) -> None:
    import torch

    from reactdiff.serve import BatchingDenoiser, open_generator, step_together

    torch.set_num_threads(1)  # one core per worker; the workers are the parallelism
    batching = BatchingDenoiser(denoiser)
    generators: dict[int, Any] = {}
    sending = threading.Lock()
    steps = ThreadPoolExecutor(max_workers=64, thread_name_prefix="conversation")

    def reply(message: tuple) -> None:
        with sending:
            conn.send(message)

    def step(ident: int, face: np.ndarray, audio: np.ndarray) -> None:
        try:
            generator = generators[ident]
            reactions = step_together(batching, generator, face, audio)
            reply(("reactions", ident, reactions, generator.frame))
        except (ValueError, RejectedInput, NonFiniteOutput) as err:
            reply(("rejected", ident, str(err)))
        except Exception as err:  # a bug: the conversation ends, the worker serves the others
            reply(("failed", ident, f"{type(err).__name__}: {err}"))

    reply(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the service is gone
            break
        kind = message[0]
        if kind == "stop":
            break
        ident: int = message[1]
        if kind == "open":
            try:
                generators[ident] = open_generator(batching, stats, encoder, device, window, message[2])
                reply(("opened", ident))
            except Exception as err:
                reply(("failed", ident, f"{type(err).__name__}: {err}"))
        elif kind == "step":
            steps.submit(step, ident, message[2], message[3])
        elif kind == "close":
            generators.pop(ident, None)
    steps.shutdown(wait=False, cancel_futures=True)


class _Worker:
    def __init__(self, context, index: int, args: tuple) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, *args), name=f"listener-worker-{index}", daemon=True
        )
        self.process.start()
        child.close()
        if not self.conn.poll(READY_TIMEOUT_S) or self.conn.recv() != ("ready",):
            self.process.kill()
            raise RuntimeError(f"listener worker {index} did not start (exit code {self.process.exitcode})")
        self.conversations = 0
        self.alive = True
        self.pending: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, name=f"worker-{index}-replies", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                message = None
            if (
                message is None
            ):  # the worker died: every waiting conversation is told, none is sent here again
                with self.lock:
                    self.alive = False
                    waiting, self.pending = self.pending, {}
                for loop, future in waiting.values():
                    loop.call_soon_threadsafe(_settle, future, ("failed", None, "the worker process died"))
                return
            with self.lock:
                loop, future = self.pending.pop(message[1])
            loop.call_soon_threadsafe(_settle, future, message)

    async def request(self, ident: int, message: tuple) -> tuple:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self.lock:
            if not self.alive:
                return ("failed", ident, "the worker process died")
            self.pending[ident] = (loop, future)
        try:
            self.conn.send(message)
        except OSError:
            with self.lock:
                self.pending.pop(ident, None)
            return ("failed", ident, "the worker process died")
        return await future


def _settle(future: asyncio.Future, message: tuple) -> None:
    if not future.done():
        future.set_result(message)


class RemoteConversation:
    def __init__(self, worker: _Worker, ident: int) -> None:
        self.worker, self.ident, self.frame = worker, ident, 0

    async def step(self, face: np.ndarray, audio: np.ndarray) -> np.ndarray:
        """The M reactions to one window; :class:`ValueError` when the worker refused the window."""
        reply = await self.worker.request(self.ident, ("step", self.ident, face, audio))
        if reply[0] == "rejected":
            raise ValueError(reply[2])
        if reply[0] == "failed":
            raise ConversationFailed(reply[2])
        self.frame = reply[3]
        return reply[2]

    def close(self) -> None:
        self.worker.conversations -= 1
        try:
            self.worker.conn.send(("close", self.ident))
        except OSError:
            pass


class ProcessConversations:
    """``processes`` worker processes; a new conversation goes to the one with the fewest."""

    def __init__(self, processes: int, denoiser, stats, encoder, device: str, window: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and torch
        args = (denoiser, stats, encoder, str(device), window)
        self.workers = [_Worker(context, k, args) for k in range(processes)]
        self._ids = itertools.count()

    async def open(self, options: dict[str, Any]) -> RemoteConversation:
        alive = [w for w in self.workers if w.alive]
        if not alive:
            raise ConversationFailed("every worker process has died; restart the service")
        worker = min(alive, key=lambda w: w.conversations)
        ident = next(self._ids)
        worker.conversations += 1
        reply = await worker.request(ident, ("open", ident, options))
        if reply[0] != "opened":
            worker.conversations -= 1
            raise ConversationFailed(reply[2])
        return RemoteConversation(worker, ident)

    def close(self) -> None:
        for worker in self.workers:
            try:
                worker.conn.send(("stop",))
            except OSError:
                pass
        for worker in self.workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
