"""PNG figures of coefficients, metrics and the denoising curve (matplotlib, Agg)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from reactdiff.layout import FPS
from reactdiff.render.faces import PAPER_PLOT_DIMS, coefficient_index, coefficient_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# --- plots ------------------------------------------------------------------------------------------------
def _save_figure(fig: Figure, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_coefficients(
    path: Path,
    speaker: np.ndarray,
    listener_real: np.ndarray | None,
    generated: np.ndarray,
    dims: Sequence[int | str] = PAPER_PLOT_DIMS,
    fps: int = FPS,
    title: str | None = None,
) -> None:
    """PNG of chosen coefficients over time, one panel per dim: the speaker, the real listener and the M
    generated listeners overlaid (thin, translucent) with their mean.

    ``speaker`` ``[T, 58]``, ``listener_real`` ``[T, 58]`` or None, ``generated`` ``[M, T, 58]``; ``dims``
    are indices or names (ARKit expression names, ``pitch``/``yaw``/``roll``/``tx``/``ty``/``tz``).
    """
    from matplotlib.figure import Figure

    idx = [coefficient_index(d) for d in dims]
    if not idx:
        raise ValueError("plot_coefficients needs at least one dim")
    speaker = np.asarray(speaker)
    generated = np.asarray(generated)
    if generated.ndim == 2:
        generated = generated[None]
    t = np.arange(len(speaker)) / fps
    fig = Figure(figsize=(10, 1.7 * len(idx) + 0.8), layout="constrained")
    axes = fig.subplots(len(idx), 1, sharex=True, squeeze=False)[:, 0]
    for ax, d in zip(axes, idx, strict=True):
        for m, g in enumerate(generated):
            ax.plot(
                t[: len(g)],
                g[:, d],
                color="tab:orange",
                lw=0.7,
                alpha=0.35,
                label="generated" if m == 0 else None,
            )
        if len(generated) > 1:
            ax.plot(
                t[: generated.shape[1]],
                generated[:, :, d].mean(0),
                color="tab:red",
                lw=1.2,
                label="generated mean",
            )
        ax.plot(t, speaker[:, d], color="tab:blue", lw=1.2, label="speaker")
        if listener_real is not None:
            ax.plot(
                t[: len(listener_real)],
                np.asarray(listener_real)[:, d],
                color="black",
                lw=1.2,
                label="listener (real)",
            )
        ax.set_ylabel(coefficient_name(d), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=4)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def plot_metric_bars(
    path: Path,
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    lower_is_better: Iterable[str] = (),
    title: str | None = None,
) -> None:
    """PNG of bar charts, one panel per metric, one bar per variant: ``table[variant][metric] -> value``.

    Missing or non-finite values are marked ``n/a``; panels of metrics in ``lower_is_better`` say so.
    """
    from matplotlib.figure import Figure

    if not metrics or not table:
        raise ValueError("plot_metric_bars needs at least one metric and one variant")
    lower = set(lower_is_better)
    variants = list(table)
    cols = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(3.2 * cols + 0.5, 2.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = [f"C{k % 10}" for k in range(len(variants))]
    for ax, metric in zip(axes, metrics, strict=False):
        values = [float(table[v].get(metric, np.nan)) for v in variants]
        finite = [v if np.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(variants)), finite, color=colours)
        for bar, v in zip(bars, values, strict=True):
            label = f"{v:.3g}" if np.isfinite(v) else "n/a"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric + (" (lower is better)" if metric in lower else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def plot_denoising_curve(path: Path, curve: Sequence[Mapping[str, float]], title: str | None = None) -> None:
    """PNG of a denoising curve (:func:`reactdiff.denoising.denoising_curve`): mean squared error against
    the noise level, log-log, one line per estimate (noisy input, linear denoiser, model), and the model's
    error relative to the linear denoiser's below it.
    """
    from matplotlib.figure import Figure

    if not curve:
        raise ValueError("plot_denoising_curve needs at least one noise level")
    sigma = np.array([row["sigma"] for row in curve])
    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    styles = {"noisy": ("noisy input", "0.6", "--"), "linear": ("linear (Wiener) denoiser", "tab:blue", "-")}
    styles["model"] = ("model", "tab:red", "-")
    for key, (label, colour, line) in styles.items():
        top.loglog(sigma, [row[key] for row in curve], line, color=colour, marker="o", ms=4, label=label)
    top.set_ylabel("mean squared error")
    top.legend(fontsize=8)
    top.grid(alpha=0.3, which="both")
    ratio = np.array([row["model"] / row["linear"] for row in curve])
    bottom.semilogx(sigma, ratio, color="tab:red", marker="o", ms=4)
    bottom.axhline(1.0, color="tab:blue", lw=1)
    bottom.set_ylabel("model / linear")
    bottom.set_xlabel("noise level sigma")
    bottom.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)
