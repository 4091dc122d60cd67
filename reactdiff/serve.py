"""A live listener service: agents stream a speaker's face and voice in, and get M listener reactions back.

Run ``python -m reactdiff.serve --model models/teacher/reactdiff.pt --stats features/norm_stats.json`` (it
binds to 127.0.0.1:8765; any other address needs ``--token``). One WebSocket connection to ``/listen`` is one
conversation. Messages are JSON text frames; arrays of floats travel as base64 of little-endian float32
(``"f32le"``), which every language can produce and read without a JSON parser's float round trip.

Client to server::

    {"type": "start", "samples": 10, "seed": 0, "steps": 50, "guidance": 3.0,
     "listener_start": null,                       # or the listener's 58 coefficients before it starts
     "render": null}                               # or {"tile": 96, "every": 4}: pictures (below)
    {"type": "window", "face": "<f32le [w, 58]>", "audio": "<f32le [w * 640]>"}   # 16 kHz mono in [-1, 1]

Server to client::

    {"type": "ready", "window": 16, "fps": 25, "audio_rate": 16000, "coefficients": [...58 names...],
     "samples": 10}
    {"type": "reactions", "frame": 15, "shape": [10, 16, 58], "reactions": "<f32le>", "latency_ms": 212.0}
    {"type": "frames", "frames": [3, 7, 11, 15], "images": ["<base64 JPEG>", ...]}   # only with "render"
    {"type": "rejected", "message": "..."}   # this window was refused; the conversation goes on unchanged
    {"type": "error", "message": "..."}      # a protocol error; the server then closes the connection

Each window message holds the next ``w`` frames (0.64 s at 25 fps) of the speaker: its face coefficients
and the raw audio of those frames. The reply is the M reactions to them, window by window, never using a
later frame. A window that is non-finite, absurd or of the wrong length is rejected, and the next window
continues the same reactions as if it had never been sent (:class:`reactdiff.online.RejectedInput`).

Concurrency: each conversation runs its own :class:`~reactdiff.online.OnlineReactionGenerator` in a
worker, one worker process per core on a CPU (:mod:`reactdiff.serve_pool`), one in-process worker on a
GPU; each worker runs the denoiser calls of its conversations whose windows overlap as one batch per
solver step (:class:`BatchingDenoiser`). The event loop only moves messages; a slow client only delays
itself. ``python -m benchmarks.serve`` measures it.

Limits (all configurable): connections, message size, samples and steps per conversation, and windows
queued per connection (a client sending faster than real time is told so and disconnected). No pickles
or code are accepted from the network: only JSON and raw float32 arrays.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import ipaddress
import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from reactdiff import layout, reference
from reactdiff.audio import AudioEncoder, build_encoder
from reactdiff.conditions import Conditions
from reactdiff.config import SampleParams
from reactdiff.demo import DemoSession, WindowPainter, page, render_options
from reactdiff.features import NormStats
from reactdiff.online import NonFiniteOutput, OnlineReactionGenerator, RejectedInput
from reactdiff.samplers import prepare
from reactdiff.serve_pool import ConversationFailed, ProcessConversations

__all__ = ["BatchingDenoiser", "LocalConversations", "ServeConfig", "create_app", "main"]


class BatchingDenoiser:
    """One network, many callers: denoiser calls arriving together (from threads) run as one batch.

    A caller's call waits until a worker takes every pending call, concatenates their rows (``x``,
    ``sigma`` and the :class:`~reactdiff.conditions.Conditions` are all per row), runs the wrapped denoiser
    once and hands each caller its rows back. A row's output depends on that row alone, so a caller gets
    what it would get alone, up to the float rounding of a larger batch.

    When to run: callers that are inside a window (between :meth:`enter` and :meth:`leave`, which the
    service calls around each window) each make one call per solver step, so once a call is pending the
    worker waits until every such caller has one pending, at most ``max_wait_s``: conversations whose
    windows overlap in time then move through their solver steps together, one batch per step, instead
    of taking turns. A caller that is not inside a window (a plain generator) is never waited for.
    """

    def __init__(self, denoiser: Any, max_wait_s: float = 0.05) -> None:
        self.denoiser = denoiser
        self.config = getattr(denoiser, "config", None)
        self.max_wait_s = max_wait_s
        self.batches = 0  # network calls made (the tests count them)
        self.active = 0  # callers inside a window, each about to call once per solver step
        self._pending: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._worker = threading.Thread(target=self._serve, name="batching-denoiser", daemon=True)
        self._worker.start()

    def enter(self) -> None:
        with self._cv:
            self.active += 1

    def leave(self) -> None:
        with self._cv:
            self.active -= 1
            self._cv.notify()  # the worker may be waiting for this caller's next call

    def prepare(self, cond: Conditions, levels: torch.Tensor | None = None) -> Any:
        """The wrapped denoiser's once-per-window work, done in the caller's thread (it is per row, and
        the batch then concatenates prepared conditions: :meth:`reactdiff.model.PreparedConditions.cat`)."""
        return prepare(self.denoiser, cond, levels)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> torch.Tensor:
        call: dict[str, Any] = {"args": (x, sigma, cond), "done": threading.Event()}
        with self._cv:
            self._pending.append(call)
            self._cv.notify()
        call["done"].wait()
        if "error" in call:
            raise call["error"]
        return call["out"]

    def _serve(self) -> None:
        while True:
            with self._cv:
                while not self._pending:
                    self._cv.wait()
                deadline = time.monotonic() + self.max_wait_s
                while len(self._pending) < self.active and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(left)
                calls, self._pending = self._pending, []
            self._run(calls)

    def _run(self, calls: list[dict[str, Any]]) -> None:
        try:
            xs, sigmas, conds = zip(*(c["args"] for c in calls), strict=True)
            cond = conds[0]
            for other in conds[1:]:
                cond = cond.cat(other)
            with torch.inference_mode():
                out = self.denoiser(torch.cat(xs), torch.cat(sigmas), cond)
            self.batches += 1
            start = 0
            for call, x in zip(calls, xs, strict=True):
                call["out"] = out[start : start + x.shape[0]]
                start += x.shape[0]
        except Exception as err:  # every waiting caller gets the error, none hangs
            for call in calls:
                call["error"] = err
        for call in calls:
            call["done"].set()


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the service; ``token``: required from every client when set (any non-loopback bind)."""

    token: str | None = None
    max_connections: int = 16
    max_message_bytes: int = 1 << 20
    max_samples: int = 32
    max_steps: int = 100
    max_queued_windows: int = 4
    send_timeout_s: float = 10.0
    """A client that has not taken a reply within this time has stopped reading: it is dropped, so that
    its unread replies do not pile up in the server's memory."""
    recipe: SampleParams = SampleParams()
    """What a conversation gets unless its start message says otherwise: the recipe that the sample
    stage runs and the evaluate stage scores, for the model served (``model: student`` for a distilled
    student: its few consistency steps, unguided)."""


def _floats(text: Any, what: str, count: int | None = None) -> np.ndarray:
    """A base64 f32le array from a message, or :class:`ValueError` saying what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"{what} must be a base64 string of little-endian float32 values")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not valid base64") from None
    if len(raw) % 4:
        raise ValueError(f"{what} holds {len(raw)} bytes, not a whole number of float32 values")
    values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if count is not None and values.size != count:
        raise ValueError(f"{what} holds {values.size} values, expected {count}")
    return values


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _start_options(message: dict, config: ServeConfig, window: int) -> dict[str, Any]:
    """The generator options of a ``start`` message over ``config.recipe``, checked against the limits."""
    recipe = config.recipe.recipe()
    samples = message.get("samples", config.recipe.samples)
    steps, seed = message.get("steps", recipe["steps"]), message.get("seed", 0)
    guidance = message.get("guidance", recipe["guidance_scale"])
    for name, value, high in (("samples", samples, config.max_samples), ("steps", steps, config.max_steps)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
            raise ValueError(f"{name} must be an integer in [1, {high}], got {value!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or not 0 <= guidance <= 10:
        raise ValueError(f"guidance must be a number in [0, 10], got {guidance!r}")
    start = message.get("listener_start")
    if start is not None:
        if not isinstance(start, list) or len(start) != layout.N_COEFFS:
            raise ValueError(f"listener_start must be null or a list of {layout.N_COEFFS} numbers")
        start = np.asarray(start, dtype=np.float32)
        if not np.isfinite(start).all():
            raise ValueError("listener_start must be finite")
    return {
        **recipe,
        "samples": samples,
        "steps": steps,
        "seed": seed,
        "guidance_scale": float(guidance),
        "start": start,
        "render": render_options(message.get("render"), window),
    }


def step_together(
    batching: BatchingDenoiser, generator: OnlineReactionGenerator, face: np.ndarray, audio: np.ndarray
) -> np.ndarray:
    """One window of one conversation, counted as active so that the batcher waits for its calls."""
    batching.enter()
    try:
        return generator.step(face, audio)
    finally:
        batching.leave()


def open_generator(
    batching: BatchingDenoiser,
    stats: NormStats,
    encoder: AudioEncoder,
    device: torch.device | str,
    window: int,
    options: dict[str, Any],
) -> OnlineReactionGenerator:
    """The generator of a conversation started with ``options`` (:func:`_start_options`): the start
    message's samples, steps, seed and guidance scale over the recipe the sample stage runs."""
    generator = OnlineReactionGenerator(
        batching,
        stats,
        window=window,
        samples=options["samples"],
        steps=options["steps"],
        solver=options["solver"],
        eta=options["eta"],
        guidance_scale=options["guidance_scale"],
        guidance_interval=options["guidance_interval"],
        clip_expression=options["clip_expression"],
        seed=options["seed"],
        device=device,
        encoder=encoder,
    )
    generator.reset(options["start"])
    return generator


class LocalConversation:
    def __init__(self, owner: LocalConversations, slot: int, generator: OnlineReactionGenerator) -> None:
        self.owner, self.slot, self.generator = owner, slot, generator

    @property
    def frame(self) -> int:
        return self.generator.frame

    async def step(self, face: np.ndarray, audio: np.ndarray) -> np.ndarray:
        batching = self.owner.batchers[self.slot]
        return await run_in_threadpool(step_together, batching, self.generator, face, audio)

    def close(self) -> None:
        self.owner.load[self.slot] -= 1


class LocalConversations:
    """Conversations in this process: ``workers`` network workers, each a :class:`BatchingDenoiser` of its
    own (a thread); a new conversation joins the least busy one, and conversations of one worker batch
    together. What a GPU (one worker) and the tests use; on CPU cores the service runs conversations in
    worker processes instead (:mod:`reactdiff.serve_pool`)."""

    def __init__(self, denoiser: Any, stats: NormStats, encoder: AudioEncoder, device, workers: int = 1):
        first = denoiser if isinstance(denoiser, BatchingDenoiser) else BatchingDenoiser(denoiser)
        self.batchers = [first] + [BatchingDenoiser(first.denoiser) for _ in range(workers - 1)]
        self.load = dict.fromkeys(range(workers), 0)  # conversations per worker
        self.stats, self.encoder, self.device = stats, encoder, device
        self.window = int(first.config.frames) if first.config is not None else 16

    async def open(self, options: dict[str, Any]) -> LocalConversation:
        slot = min(self.load, key=self.load.__getitem__)
        generator = open_generator(
            self.batchers[slot], self.stats, self.encoder, self.device, self.window, options
        )
        self.load[slot] += 1
        return LocalConversation(self, slot, generator)

    def close(self) -> None:
        pass


class ClientNotReading(Exception):
    """A reply could not be delivered within ``ServeConfig.send_timeout_s``."""


def _authorised(websocket: Any, token: str | None) -> bool:
    if token is None:
        return True
    given = websocket.query_params.get("token") or ""
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        given = given or header[7:]
    return hmac.compare_digest(given.encode(), token.encode())


async def _send_error(websocket: WebSocket, message: str, code: int = 1008) -> None:
    await websocket.send_json({"type": "error", "message": message})
    await websocket.close(code=code)


class _Listener:
    """One connection of ``/listen``: the start message, then each window in and its replies out.

    A reader task takes the client's messages off the socket into a queue of at most
    ``max_queued_windows``, so that a client sending faster than real time is told so at once; the
    windows are answered one at a time, in order.
    """

    def __init__(self, websocket: WebSocket, config: ServeConfig, conversations: Any, window: int, rate: int):
        self.websocket, self.config, self.conversations = websocket, config, conversations
        self.window, self.rate, self.hop = window, rate, rate // layout.FPS
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=config.max_queued_windows)
        self.conversation: Any = None
        self.painter: WindowPainter | None = None
        self.reader: asyncio.Task | None = None

    async def run(self) -> None:
        try:
            if await self._start():
                self.reader = asyncio.create_task(self._read())
                await self._stream()
        except WebSocketDisconnect:
            pass
        except ConversationFailed as err:
            await _send_error(self.websocket, f"the conversation failed and ended: {err}", code=1011)
        except ClientNotReading:
            # The conversation ends here: its slot, its generator and its worker's batch are let go at
            # once. The connection itself closes once uvicorn's keep-alive pings go unanswered.
            pass
        finally:
            if self.reader is not None:
                self.reader.cancel()
            if self.conversation is not None:
                self.conversation.close()

    async def _start(self) -> bool:
        try:
            message = json.loads(await self.websocket.receive_text())
            if not isinstance(message, dict) or message.get("type") != "start":
                raise ValueError('the first message must be {"type": "start", ...}')
            options = _start_options(message, self.config, self.window)
        except (ValueError, json.JSONDecodeError) as err:
            await _send_error(self.websocket, f"bad start message: {err}")
            return False
        self.conversation = await self.conversations.open(options)
        if options["render"] is not None:
            self.painter = WindowPainter(options["samples"], *options["render"])
        await self.websocket.send_json(
            {"type": "ready", "window": self.window, "fps": layout.FPS, "audio_rate": self.rate,
             "coefficients": reference.coefficient_names(), "samples": options["samples"]}
        )  # fmt: skip
        return True

    async def _read(self) -> None:
        limit, queued = self.config.max_message_bytes, self.config.max_queued_windows
        while True:
            text = await self.websocket.receive_text()
            if len(text) > limit:
                raise OverflowError(f"a message of {len(text)} bytes (the limit is {limit})")
            try:
                self.queue.put_nowait(text)
            except asyncio.QueueFull:
                raise OverflowError(
                    f"more than {queued} windows waiting: send at most real time "
                    f"(one window every {self.window / layout.FPS:.2f} s)"
                ) from None

    async def _send(self, reply: dict) -> None:
        try:
            await asyncio.wait_for(self.websocket.send_json(reply), self.config.send_timeout_s)
        except TimeoutError:
            raise ClientNotReading from None

    async def _stream(self) -> None:
        assert self.reader is not None
        while True:
            getter = asyncio.create_task(self.queue.get())
            done, _ = await asyncio.wait({getter, self.reader}, return_when=asyncio.FIRST_COMPLETED)
            if self.reader in done:
                getter.cancel()
                err = self.reader.exception()
                if isinstance(err, OverflowError):
                    await _send_error(self.websocket, str(err), code=1009)
                return  # disconnected (or read error): the conversation ends
            text = getter.result()
            try:
                message = json.loads(text)
                if not isinstance(message, dict) or message.get("type") != "window":
                    raise json.JSONDecodeError('expected {"type": "window", ...}', text[:40], 0)
            except json.JSONDecodeError as err:
                await _send_error(self.websocket, f"bad message: {err.msg}")
                return
            await self._answer(message)

    async def _answer(self, message: dict) -> None:
        """The reactions to one window (and its pictures when asked for), or why it was rejected."""
        started, w = time.perf_counter(), self.window
        try:
            face = _floats(message.get("face"), "face", w * layout.N_COEFFS).reshape(w, layout.N_COEFFS)
            audio = _floats(message.get("audio"), "audio", w * self.hop)
            reactions = await self.conversation.step(face, audio)
        except (ValueError, RejectedInput, NonFiniteOutput) as err:
            await self._send({"type": "rejected", "message": str(err)})
            return
        frame = self.conversation.frame
        await self._send(
            {
                "type": "reactions",
                "frame": frame - 1,
                "shape": list(reactions.shape),
                "reactions": _encode(reactions),
                "latency_ms": round(1000 * (time.perf_counter() - started), 1),
            }
        )
        if self.painter is not None:
            images = await run_in_threadpool(self.painter.paint, face, reactions)
            frames = list(range(frame - w + self.painter.every - 1, frame, self.painter.every))
            await self._send({"type": "frames", "frames": frames, "images": images})


def create_app(
    denoiser: Any,
    stats: NormStats,
    encoder: AudioEncoder,
    config: ServeConfig = ServeConfig(),
    device: torch.device | str = "cpu",
    workers: int = 1,
    demo: DemoSession | None = None,
    conversations: Any = None,
):
    """The FastAPI app: ``/listen`` (the WebSocket protocol of the module docstring) and ``/health``;
    with a ``demo`` session also the browser demo (``/demo``, ``/demo/session``; :mod:`reactdiff.demo`).

    Conversations run in ``conversations`` (:class:`~reactdiff.serve_pool.ProcessConversations`, closed
    with the app), by default in this process with ``workers`` network workers (:class:`LocalConversations`).
    """
    if conversations is None:
        conversations = LocalConversations(denoiser, stats, encoder, device, workers)
    config_of = getattr(denoiser, "config", None)
    window = int(config_of.frames) if config_of is not None else 16

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        conversations.close()

    app = FastAPI(title="ReactDiff live listener", lifespan=lifespan)
    app.state.connections = 0

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "connections": app.state.connections, "window": window}

    if demo is not None:
        session = demo.as_json()

        def authorise(request: Request) -> None:  # the page carries ?token=... on to its requests
            if not _authorised(request, config.token):
                raise HTTPException(status_code=401, detail="missing or wrong token")

        @app.get("/", include_in_schema=False)
        def root(request: Request) -> RedirectResponse:
            return RedirectResponse("/demo" + (f"?{request.url.query}" if request.url.query else ""))

        @app.get("/demo", response_class=HTMLResponse)
        def demo_page(request: Request) -> str:
            authorise(request)
            return page()

        @app.get("/demo/session")
        def demo_session(request: Request) -> dict[str, Any]:
            authorise(request)
            return session

    @app.websocket("/listen")
    async def listen(websocket: WebSocket) -> None:
        if not _authorised(websocket, config.token):
            await websocket.close(code=1008, reason="missing or wrong token")
            return
        if app.state.connections >= config.max_connections:
            await websocket.close(code=1013, reason=f"at most {config.max_connections} conversations")
            return
        await websocket.accept()
        app.state.connections += 1
        try:
            await _Listener(websocket, config, conversations, window, encoder.sample_rate).run()
        finally:
            app.state.connections -= 1

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback bind without a token: the service would take any client on the network."""
    if not _is_loopback(host) and not token:
        raise SystemExit(
            f"--host {host} exposes the service beyond this machine: give --token (or REACTDIFF_TOKEN); "
            "every client must then send it (?token=... or an 'Authorization: Bearer ...' header)"
        )


def resolve_model(reference: str) -> Path:
    """The checkpoint ``--model`` names: a file, or an MLflow reference to the training run a researcher
    compared in the UI: ``runs:/<run_id>`` (its logged ``model/reactdiff.pt``, or the path its
    ``checkpoint_path`` tag records when the checkpoint was too big to log) or ``runs:/<run_id>/<path>``.
    MLflow's tracking URI applies (``MLFLOW_TRACKING_URI``; by default ``sqlite:///mlflow.db`` here)."""
    if not reference.startswith("runs:/"):
        return Path(reference)
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, _, artifact = reference.removeprefix("runs:/").partition("/")
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
        if artifact:
            return Path(client.download_artifacts(run_id, artifact))
        if "model/reactdiff.pt" in {a.path for a in client.list_artifacts(run_id, "model")}:
            return Path(client.download_artifacts(run_id, "model/reactdiff.pt"))
    except MlflowException as err:
        raise SystemExit(
            f"--model {reference}: {err.message} (tracking URI {mlflow.get_tracking_uri()})"
        ) from None
    if "checkpoint_path" in run.data.tags:
        return Path(run.data.tags["checkpoint_path"])
    raise SystemExit(
        f"--model {reference}: the run logged no model/reactdiff.pt and records no checkpoint_path: "
        "is it a training run (its name starts with 'train')?"
    )


def main(argv: Sequence[str] | None = None) -> None:
    import os

    import uvicorn

    from reactdiff.distillation import distilled_or_trained
    from reactdiff.training import load_denoiser

    parser = argparse.ArgumentParser(prog="python -m reactdiff.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="models/teacher/reactdiff.pt",
        help="a checkpoint (a trained teacher or a distilled student), or runs:/<run_id> of a training run",
    )
    parser.add_argument("--stats", type=Path, default=Path("features/norm_stats.json"))
    parser.add_argument("--encoder", default="logmel", help="the audio encoder the model was trained with")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=os.environ.get("REACTDIFF_TOKEN"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="what the network computes in (auto: bf16 on GPUs and, for large networks, on bf16 CPUs)",
    )
    parser.add_argument("--max-connections", type=int, default=ServeConfig.max_connections)
    parser.add_argument("--workers", type=int, default=0, help="worker processes on CPU (0: one per core)")
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=ServeConfig.send_timeout_s,
        help="seconds a reply may wait for a client to read it before the conversation is dropped",
    )
    parser.add_argument(
        "--demo", type=Path, help="a corpus (e.g. data_sample) whose session the browser demo at /demo plays"
    )
    parser.add_argument("--demo-split", default="test")
    parser.add_argument("--demo-example", type=int, default=0)
    args = parser.parse_args(argv)
    check_bind(args.host, args.token)

    from reactdiff.devices import select_device

    device = select_device(args.device)
    checkpoint = resolve_model(args.model)
    denoiser = load_denoiser(checkpoint, device=device, precision=args.precision)
    config = ServeConfig(
        token=args.token,
        max_connections=args.max_connections,
        send_timeout_s=args.send_timeout,
        recipe=SampleParams(model=distilled_or_trained(checkpoint)),
    )
    stats, encoder = NormStats.load(args.stats), build_encoder(args.encoder)
    workers, conversations = 1, None
    if device.type == "cpu":
        # One worker process per core, each on one torch thread (serve_pool says why): a small network
        # is faster on one thread per call than on torch's default of every core, and threads of one
        # process wait on each other's Python.
        torch.set_num_threads(1)
        workers = args.workers or (os.cpu_count() or 1)
        window = int(denoiser.config.frames)
        conversations = ProcessConversations(workers, denoiser, stats, encoder, str(device), window)
    demo = None
    if args.demo is not None:
        from reactdiff.demo import load_demo_session

        demo = load_demo_session(args.demo, args.demo_split, args.demo_example, encoder.sample_rate)
    app = create_app(
        denoiser,
        stats,
        encoder,
        config,
        device=device,
        workers=workers,
        demo=demo,
        conversations=conversations,
    )
    print(
        f"[serve] {args.model} on {device} ({workers} worker {'processes' if conversations else 'threads'}): "
        f"ws://{args.host}:{args.port}/listen",
        flush=True,
    )
    if demo is not None:
        print(f"[serve] browser demo ({demo.name}): http://{args.host}:{args.port}/demo", flush=True)
    uvicorn.run(
        app, host=args.host, port=args.port, ws_max_size=config.max_message_bytes, log_level="warning"
    )


if __name__ == "__main__":
    main()
