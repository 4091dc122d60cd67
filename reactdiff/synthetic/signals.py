"""Signal helpers: smoothing, slow noise, pulses, delays and nods (frames at 25 fps along axis 0)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import signal

from reactdiff import layout

# --------------------------------------------------------------------------------------------------
# Signal helpers (all along axis 0, frames at 25 fps unless said otherwise)
# --------------------------------------------------------------------------------------------------


def _smooth(x: np.ndarray, tau: float) -> np.ndarray:
    """Critically damped second-order low-pass (two equal first-order stages), unit DC gain.

    Starts at rest at ``x[0]`` so there is no start-up transient; ``tau`` in samples.
    """
    a = float(np.exp(-1.0 / tau))
    b, den = [1.0 - a], [1.0, -a]
    x = np.asarray(x, dtype=np.float64)
    for _ in range(2):
        zi = a * x[:1]
        x, _ = signal.lfilter(b, den, x, axis=0, zi=zi)
    return x


def _ou(rng: np.random.Generator, n: int, tau: float, std: float, smooth: float = 2.0) -> np.ndarray:
    """Stationary slow noise ``[n]``: an AR(1) process of correlation time ``tau`` frames, smoothed."""
    a = float(np.exp(-1.0 / tau))
    innovation = rng.standard_normal(n) * np.sqrt(1.0 - a * a)
    x, _ = signal.lfilter([1.0], [1.0, -a], innovation, zi=[a * rng.standard_normal()])
    return std * _smooth(x, smooth)


def _pulses(n: int, events: Iterable[tuple[float, float, float]]) -> np.ndarray:
    """Piecewise-constant target ``[n]`` from ``(start, duration, level)`` events (frames); overlaps add."""
    target = np.zeros(n)
    for start, duration, level in events:
        lo = max(int(round(start)), 0)
        hi = min(int(round(start + duration)), n)
        if hi > lo:
            target[lo:hi] += level
    return target


def _delay(x: np.ndarray, d: int) -> np.ndarray:
    """``x`` shifted ``d`` frames later, holding the first value."""
    if d <= 0:
        return x.copy()
    return np.concatenate([np.repeat(x[:1], d, axis=0), x[:-d]], axis=0)


def _nod(n: int, onset: float, duration: float, freq: float, amplitude: float) -> np.ndarray:
    """Pitch oscillation ``[n]`` (radians) under a Hann window: a head nod of ``freq`` Hz."""
    out = np.zeros(n)
    lo, hi = int(np.ceil(onset)), int(np.floor(onset + duration))
    lo, hi = max(lo, 0), min(hi, n)
    if hi <= lo:
        return out
    t = (np.arange(lo, hi) - onset) / layout.FPS
    window = np.sin(np.pi * (np.arange(lo, hi) - onset) / duration) ** 2
    out[lo:hi] = amplitude * window * np.sin(2 * np.pi * freq * t)
    return out
