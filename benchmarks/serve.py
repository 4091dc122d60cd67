"""Latency of the live listener service under 1, 4 and 16 concurrent real-time conversations.

    python -m benchmarks.serve [--model models/teacher/reactdiff.pt] [--stats features/norm_stats.json]
                               [--clients 1,4,16] [--windows 12] [--samples 10] [--steps 50] [--guidance 3]

Starts ``python -m reactdiff.serve`` on a free loopback port, then for each client count opens that many
WebSocket conversations that stream a speaker in real time: window ``i`` (16 frames, 0.64 s) is sent at
``t0 + 0.64 i`` with its face coefficients and 16 kHz audio, as a live agent would, staggered at random
within the first window so that the clients are not artificially synchronised. The latency of a window
is from sending it to receiving its reactions. A conversation is real time when every window is answered
within 0.64 s; the table gives p50 and p99 latency, the share of windows within 0.64 s, and the CPU use
of the service with its worker processes (cores busy on average). The first window of each conversation
is a warm-up and is not counted. Speaker inputs are the train means plus noise: latency does not depend
on the content.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import load_average, load_line

WINDOW, FPS, HOP = 16, 25, 640
BUDGET_S = WINDOW / FPS


def _f32(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


async def _conversation(port: int, args: argparse.Namespace, seed: int, offset: float) -> list[float]:
    import websockets

    rng = np.random.default_rng(seed)
    stats = json.loads(Path(args.stats).read_text())
    mean, std = np.asarray(stats["face_mean"]), np.asarray(stats["face_std"])
    latencies = []
    async with websockets.connect(f"ws://127.0.0.1:{port}/listen", max_size=None) as ws:
        start = {"type": "start", "samples": args.samples, "seed": seed, "steps": args.steps}
        await ws.send(json.dumps({**start, "guidance": args.guidance}))
        json.loads(await ws.recv())
        await asyncio.sleep(offset)
        t0 = time.perf_counter()
        for i in range(args.windows):
            await asyncio.sleep(max(0.0, t0 + i * BUDGET_S - time.perf_counter()))
            face = mean + 0.5 * std * rng.normal(size=(WINDOW, len(mean)))
            audio = 0.1 * rng.normal(size=WINDOW * HOP)
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "window", "face": _f32(face), "audio": _f32(audio)}))
            reply = json.loads(await ws.recv())
            if reply["type"] != "reactions":
                raise RuntimeError(f"the service answered {reply}")
            if i:  # the first window warms up the conversation's generator
                latencies.append(time.perf_counter() - sent)
    return latencies


async def _round(port: int, clients: int, args: argparse.Namespace) -> list[float]:
    rng = np.random.default_rng(clients)
    offsets = rng.uniform(0, BUDGET_S, size=clients)
    results = await asyncio.gather(*(_conversation(port, args, k, offsets[k]) for k in range(clients)))
    return [x for r in results for x in r]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/teacher/reactdiff.pt")
    parser.add_argument("--stats", default="features/norm_stats.json")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=None, help="default: the sample stage's")
    parser.add_argument("--workers", type=int, default=0, help="the service's workers (0: its default)")
    args = parser.parse_args()
    if args.guidance is None:
        from reactdiff.serve import ServeConfig

        args.guidance = ServeConfig().recipe.guidance_scale

    import httpx
    import psutil

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    counts = [int(c) for c in args.clients.split(",") if c]
    server = subprocess.Popen(
        [sys.executable, "-m", "reactdiff.serve", "--model", args.model, "--stats", args.stats,
         "--port", str(port), "--max-connections", str(max(counts)), "--workers", str(args.workers)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )  # fmt: skip
    rows = []
    load_before = load_average()
    try:
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.TransportError:
                if server.poll() is not None:
                    raise SystemExit("the service did not start") from None
                time.sleep(0.5)
        service = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]

        def cpu_seconds() -> float:  # the service and its worker processes
            return sum(sum(p.cpu_times()[:2]) for p in service)

        for clients in counts:
            cpu0, t0 = cpu_seconds(), time.perf_counter()
            latencies = np.asarray(asyncio.run(_round(port, clients, args)))
            cores = (cpu_seconds() - cpu0) / (time.perf_counter() - t0)
            rows.append(
                f"| {clients} | {len(latencies)} | {1000 * np.percentile(latencies, 50):.0f} "
                f"| {1000 * np.percentile(latencies, 99):.0f} | {100 * np.mean(latencies <= BUDGET_S):.0f} % "
                f"| {'yes' if np.percentile(latencies, 99) <= BUDGET_S else 'no'} | {cores:.2f} |"
            )
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(
        f"Live listener service: M = {args.samples}, {args.steps} steps, guidance {args.guidance:g}, "
        f"{args.windows - 1} timed windows per conversation, real time = {1000 * BUDGET_S:.0f} ms per window."
    )
    print(
        "| conversations | windows | p50 ms | p99 ms | within 640 ms | real time at p99 | server cores busy |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print(load_line(load_before, load_average()))


if __name__ == "__main__":
    main()
