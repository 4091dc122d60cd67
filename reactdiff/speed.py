"""What one online window costs: FLOPs counted over a real generation, and its latency on this machine.

Used by the ``sample`` stage (``metrics/sample.json``: every variant of an ablation carries its cost, as
Table 16 reports it) and by ``benchmarks/sampling.py``. FLOPs are counted with
``torch.utils.flop_counter.FlopCounterMode`` over one full window generation (every denoiser evaluation
of the window: matrix products, convolutions, attention and, through :data:`LSTM_FLOPS`, the LSTMs, which
the stock counter skips). Latency is the median over timed windows after one warm-up window, of one
conversation (one stream) at M samples, as a live listener runs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from reactdiff.features import NormStats
from reactdiff.online import OnlineReactionGenerator
from reactdiff.samplers import CountingDenoiser, Denoiser

__all__ = ["LSTM_FLOPS", "online_speed"]


def _lstm_flops(input_shape, hx, params, *args, out_shape=None, **kwargs) -> int:
    """``aten.lstm``: two FLOPs per multiply-add of the input and recurrent matmuls, every step."""
    steps = math.prod(input_shape[:-1])  # batch * time, whatever batch_first says
    return 2 * steps * sum(math.prod(p) for p in params if len(p) == 2)


LSTM_FLOPS = {torch.ops.aten.lstm: _lstm_flops, torch.ops.aten.lstm.input: _lstm_flops}
"""Custom mapping for ``FlopCounterMode`` that counts the LSTM layers."""


def online_speed(
    denoiser: Denoiser,
    stats: NormStats,
    speaker_face: np.ndarray,
    speaker_audio: np.ndarray,
    *,
    window: int,
    samples: int,
    windows: int = 4,
    **recipe: Any,
) -> dict[str, float]:
    """Cost of generating ``samples`` reactions to one speaker, window by window.

    ``speaker_face`` ``[T, 58]`` and ``speaker_audio`` ``[T, A]`` (raw features) feed at least
    ``windows + 2`` windows; ``recipe``: the generator's sampler settings (steps, solver, guidance...).
    Returns ``gflops_per_window``, ``evaluations_per_window`` (network calls), ``rows_per_window``
    (batch rows through the network, twice the samples where guidance runs), ``ms_per_window`` (median)
    and ``fps`` (frames per second of one conversation; ``reactdiff.layout.FPS`` is real time).
    """
    needed = (windows + 2) * window
    if len(speaker_face) < needed:
        raise ValueError(f"online_speed needs {needed} frames of speaker input, got {len(speaker_face)}")
    counter = CountingDenoiser(denoiser)
    generator = OnlineReactionGenerator(counter, stats, window=window, samples=samples, **recipe)
    generator.reset(None, seed=0)

    def step(i: int) -> None:
        frames = slice(i * window, (i + 1) * window)
        generator.step(speaker_face[frames], audio_features=speaker_audio[frames])

    with FlopCounterMode(display=False, custom_mapping=LSTM_FLOPS) as flops:
        step(0)
    evaluations, rows = counter.calls, counter.rows
    step(1)
    latencies = []
    for i in range(2, windows + 2):
        start = time.perf_counter()
        step(i)
        latencies.append(time.perf_counter() - start)
    ms = 1000.0 * float(np.median(latencies))
    return {
        "gflops_per_window": flops.get_total_flops() / 1e9,
        "evaluations_per_window": float(evaluations),
        "rows_per_window": float(rows),
        "ms_per_window": ms,
        "fps": window / (ms / 1000.0),
    }
