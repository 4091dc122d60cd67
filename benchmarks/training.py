"""Training throughput (windows per second) and peak memory of :func:`reactdiff.training.train`.

    python -m benchmarks.training [--preset demo|paper|all] [--steps N] [--batch 100] [--device auto]
                                  [--audio-dim 768] [--threads T] [--warmup 1]

Each preset runs in its own process (so the peak RSS is its own) through the real training loop
(AdamW step, gradient clipping, EMA update, autocast on CUDA), on **synthetic random windows** of the
right shapes (``w = 16`` frames, 58 coefficients, ``--audio-dim`` audio features; 768 is wav2vec2-base,
the paper's setting): the cost of a step does not depend on the values, and batches are gathered from a
random frame pool the way :class:`reactdiff.windows.WindowDataset` gathers its memory-mapped rows, so the
data path stays in the measurement. The first ``--warmup`` steps (allocator and kernel warm-up) are not
timed; validation is off and the one checkpoint written at the end is outside the timed steps.

Peak memory: CPU peak RSS of the process (``resource.getrusage``, includes the Python runtime and torch,
about 300 MB on its own); on CUDA also ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import reactdiff  # noqa: F401  (offline defaults)
from benchmarks.machine import load_average, load_line
from reactdiff.layout import N_COEFFS
from reactdiff.windows import WindowBatch

DEFAULT_STEPS = {"demo": 30, "paper": 3}


class SyntheticWindows:
    """Random normalised windows with the :class:`reactdiff.windows.WindowDataset` interface.

    A pool of ``frames`` random frames, one conversation; window ``i`` is rows ``[i, i + w)`` and its past
    window the ``w`` rows before (clamped at 0), gathered per batch exactly like the memory-mapped dataset.
    Window ``i`` has a previous window (``i - w``, for rollouts) when ``i >= w``.
    """

    def __init__(self, windows: int = 2048, w: int = 16, audio_dim: int = 768, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        frames = windows + w
        self.w = w
        self._listener = (0.5 * rng.standard_normal((frames, N_COEFFS))).astype(np.float32)
        self._face = (0.5 * rng.standard_normal((frames, N_COEFFS))).astype(np.float32)
        self._audio = rng.standard_normal((frames, audio_dim)).astype(np.float32)
        self._windows = windows

    def __len__(self) -> int:
        return self._windows

    @property
    def audio_dim(self) -> int:
        return int(self._audio.shape[1])

    def frames_before(self, indices: np.ndarray) -> np.ndarray:
        return np.asarray(indices, dtype=np.int64)

    def has_previous(self, indices: np.ndarray) -> np.ndarray:
        return self.frames_before(indices) >= self.w

    def batch(self, indices: np.ndarray, windows_back: int = 0) -> WindowBatch:
        indices = np.asarray(indices, dtype=np.int64) - windows_back * self.w
        if (indices < 0).any():
            raise ValueError(f"windows {np.flatnonzero(indices < 0)} have no window {windows_back} back")
        rows = indices[:, None] + np.arange(self.w)
        past = np.maximum(rows - self.w, 0)
        return WindowBatch(
            listener=self._listener[rows],
            past=self._listener[past],
            speaker_face=self._face[rows],
            speaker_audio=self._audio[rows],
            frame_index=indices + self.w - 1,
            example=np.zeros(len(indices), np.int32),
        )


def _run_one(args: argparse.Namespace) -> None:
    import torch

    from reactdiff.training import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    data = SyntheticWindows(audio_dim=args.audio_dim)
    cfg = TrainConfig(
        preset=args.preset,
        steps=args.steps + args.warmup,
        batch_size=args.batch,
        device=args.device,
        log_every=1,
        checkpoint_every=0,
        val_every=0,
    )
    with tempfile.TemporaryDirectory(prefix="reactdiff-bench-train-") as tmp:
        result = train(cfg, data, None, Path(tmp) / "ckpt.pt", resume=False)
    timed = result.history[args.warmup :]
    seconds = sum(cfg.batch_size / h["windows_per_s"] for h in timed)
    cuda_mb = None
    if result.device.startswith("cuda"):
        cuda_mb = torch.cuda.max_memory_allocated() / 2**20
    print(
        json.dumps(
            {
                "preset": args.preset,
                "parameters": result.parameters,
                "device": result.device,
                "threads": torch.get_num_threads(),
                "batch": cfg.batch_size,
                "steps": len(timed),
                "windows_per_s": len(timed) * cfg.batch_size / seconds,
                "s_per_step": seconds / len(timed),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_cuda_mb": cuda_mb,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=["demo", "paper", "all"], default="all")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: demo 30, paper 3)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--audio-dim", type=int, default=768, help="768 = wav2vec2-base (paper)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--_one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        _run_one(args)
        return

    presets = ["demo", "paper"] if args.preset == "all" else [args.preset]
    rows = []
    load_before = load_average()
    for preset in presets:
        steps = args.steps if args.steps is not None else DEFAULT_STEPS[preset]
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.training", "--_one", "--preset", preset,
             "--steps", str(steps), "--batch", str(args.batch), "--device", args.device,
             "--audio-dim", str(args.audio_dim), "--threads", str(args.threads),
             "--warmup", str(args.warmup)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"training benchmark: synthetic windows (w=16, audio dim {args.audio_dim}), AdamW + EMA + clipping")
    columns = "preset | parameters | device | threads | batch | timed steps | windows/s | s/step"
    print(f"| {columns} | peak RSS MB | peak CUDA MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cuda = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] is not None else "-"
        print(
            f"| {r['preset']} | {r['parameters'] / 1e6:.2f}M | {r['device']} | {r['threads']} | {r['batch']} "
            f"| {r['steps']} | {r['windows_per_s']:.1f} | {r['s_per_step']:.3f} | {r['peak_rss_mb']:.0f} "
            f"| {cuda} |"
        )
    print(load_line(load_before, load_average()))


if __name__ == "__main__":
    main()
