"""Frames per second of the weight-free renderer and of writing a reaction video, on one core.

    python -m benchmarks.render [--sizes 128,256,512] [--frames 500] [--video-frames 250] [--tile 128]
                                [--generated 10] [--repeats 3]

Coefficients are realistic: the real per-dimension mean and std of REACT faces
(:func:`reactdiff.reference.coefficient_stats`) with temporally smoothed Gaussian noise, so poses and
expressions drift as in a conversation. Numerical libraries are pinned to one thread before numpy is
imported, and ffmpeg's encoder runs with ``-threads 1``; the best of ``--repeats`` runs is reported.

Reported:

- ``renderer``: :class:`reactdiff.render.CartoonRenderer` alone, frames/s at each size;
- ``video``: one session in the layout the ``render`` stage uses (speaker + real listener + M generated
  listeners), split into rendering all streams, :func:`reactdiff.render.compose_grid` and H.264 encoding
  with AAC audio (:func:`reactdiff.render.write_video`), each as composed frames/s, and the end-to-end
  :func:`reactdiff.render.write_reaction_video`; plus the projected time for a 30 s session (750 frames).
"""

from __future__ import annotations

import os

from benchmarks.machine import load_average, load_line

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from reactdiff.layout import CLIP_FRAMES, FPS, MODEL_SAMPLE_RATE  # noqa: E402
from reactdiff.reference import coefficient_stats  # noqa: E402
from reactdiff.render import (  # noqa: E402
    CartoonRenderer,
    compose_grid,
    grid_layout,
    write_reaction_video,
    write_video,
)


def drifting_coefficients(rng: np.random.Generator, frames: int, streams: int = 1) -> np.ndarray:
    """``[streams, frames, 58]``: real mean + std x noise smoothed over ~10 frames (0.4 s)."""
    mean, std = coefficient_stats()
    noise = rng.standard_normal((streams, frames + 30, 58))
    kernel = np.hanning(21)
    kernel /= np.sqrt((kernel**2).sum())  # keeps unit variance after smoothing
    smooth = np.stack([[np.convolve(s[:, d], kernel, "valid")[:frames] for d in range(58)] for s in noise])
    return mean + std * smooth.transpose(0, 2, 1)


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,256,512")
    parser.add_argument("--frames", type=int, default=500, help="frames per renderer timing")
    parser.add_argument("--video-frames", type=int, default=250, help="frames of the timed session video")
    parser.add_argument("--tile", type=int, default=128, help="listener tile size in the video")
    parser.add_argument("--generated", type=int, default=10, help="generated listener reactions M")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    load_before = load_average()
    rng = np.random.default_rng(0)
    results: dict[str, object] = {"cpu_count": os.cpu_count(), "threads": 1}

    coeffs = drifting_coefficients(rng, args.frames)[0]
    renderer_fps = {}
    for size in (int(s) for s in args.sizes.split(",")):
        renderer = CartoonRenderer(size)
        renderer.render(coeffs[:50])  # warm the body-layer cache
        seconds = best_of(args.repeats, functools.partial(renderer.render, coeffs))
        renderer_fps[size] = round(args.frames / seconds, 1)
    results["renderer_fps"] = renderer_fps

    t, m, tile = args.video_frames, args.generated, args.tile
    speaker, real = drifting_coefficients(rng, t, 2)
    generated = drifting_coefficients(rng, t, m)
    audio = rng.uniform(-0.1, 0.1, round(t / FPS * MODEL_SAMPLE_RATE)).astype(np.float32)
    layout = grid_layout(m + 1, tile)
    speaker_renderer, tile_renderer = CartoonRenderer(layout.panel), CartoonRenderer(tile)

    def render_all() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (
            speaker_renderer.render(speaker),
            tile_renderer.render(real),
            np.stack([tile_renderer.render(g) for g in generated]),
        )

    streams = render_all()
    t_render = best_of(args.repeats, render_all)
    t_compose = best_of(args.repeats, lambda: compose_grid(*streams))
    grid = compose_grid(*streams)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "session.mp4"
        t_encode = best_of(
            args.repeats,
            lambda: write_video(out, grid, fps=FPS, audio=audio, audio_rate=MODEL_SAMPLE_RATE, threads=1),
        )
        t_total = best_of(
            args.repeats,
            lambda: write_reaction_video(
                out, speaker, real, generated, audio=audio, tile=tile, encoder_threads=1
            ),
        )
    per_frame = {"render_all_streams": t_render, "compose_grid": t_compose, "encode_h264_aac": t_encode}
    results["video"] = {
        "layout": f"speaker {layout.panel}px + 1 real + {m} generated at {tile}px",
        "video_size": f"{layout.width}x{layout.height}",
        "frames": t,
        "fps": {k: round(t / v, 1) for k, v in per_frame.items()},
        "fps_end_to_end": round(t / t_total, 1),
        "seconds_per_30s_session": round(t_total / t * CLIP_FRAMES, 1),
    }
    print(json.dumps(results, indent=2))
    print(load_line(load_before, load_average()))


if __name__ == "__main__":
    main()
