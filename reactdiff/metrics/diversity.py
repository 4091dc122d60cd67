"""FRDiv, FRVar, FRDvs, Jitter and the count of constant channels: second moments of the samples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from reactdiff.metrics import _compiled
from reactdiff.metrics._common import (
    CONST_TOL,
    SUBSETS,
    SubsetSpec,
    _check_reactions,
    _clip_chunks,
    resolve_subsets,
)
from reactdiff.metrics._compiled import numba

# ----------------------------------------------------------------------------------------------------------
# Diversity
#
# FRDiv, FRVar, Jitter, FRDvs and the count of constant channels are per-dimension sums of second moments
# of P. Compiled (numba), one pass over P computes the first four of them together (FRDvs, a variance over
# clips, needs a second pass for its deviations from the mean over clips), in float64 from P's own dtype
# without any float64 copy of P: about 1 s per pass over the REACT test set's 2.8 GB of P, where the numpy
# versions below, kept for machines without numba, convert and traverse P several times per metric (40
# CPU seconds for the five). Both use the same shifted two-pass formulas, so they agree to rounding.

_DIVERSITY = ("div", "var", "jitter", "dvs", "constant")  # per-dimension totals _diversity_totals returns


def _subset_means(per_dim: np.ndarray, cols: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {name: float(per_dim[idx].mean()) for name, idx in cols.items()}


if numba is not None:

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _diversity_kernel(P, want, const_tol, out):
        """Per-dimension totals of the diversity metrics in one pass over ``P`` ``[N, M, T, D]``.

        ``want`` bool ``[5]`` and ``out`` float64 ``[5, D]`` in the order of :data:`_DIVERSITY`:
        ``div`` sum over clips and frames of ``2 var(ddof=1)`` over samples (shifted by sample 0);
        ``var`` sum over clips and samples of ``var(ddof=1)`` over frames (shifted by frame 0);
        ``jitter`` sum of squared second differences over frames; ``dvs`` sum over samples and frames of
        ``2 var(ddof=1)`` over clips (shifted by clip 0); ``constant`` count of (clip, sample) channels
        whose ``std(ddof=0)`` over frames is at most ``const_tol`` (``want[4]`` needs ``want[1]``).
        """
        N, M, T, D = P.shape
        s1 = np.zeros(D)
        s2 = np.zeros(D)
        dvs_mean = np.zeros((M, T, D)) if want[3] else np.zeros((0, 0, 0))
        for k in range(N):
            if want[0] and M >= 2:
                for t in range(T):
                    s1[:] = 0.0
                    for m in range(1, M):
                        for d in range(D):
                            s1[d] += np.float64(P[k, m, t, d]) - np.float64(P[k, 0, t, d])
                    for d in range(D):
                        s1[d] /= M
                        s2[d] = s1[d] * s1[d]  # sample 0 is 0 after the shift
                    for m in range(1, M):
                        for d in range(D):
                            v = np.float64(P[k, m, t, d]) - np.float64(P[k, 0, t, d]) - s1[d]
                            s2[d] += v * v
                    for d in range(D):
                        out[0, d] += 2.0 * s2[d] / (M - 1)
            for m in range(M):
                if want[1]:
                    s1[:] = 0.0
                    for t in range(T):
                        for d in range(D):
                            s1[d] += np.float64(P[k, m, t, d]) - np.float64(P[k, m, 0, d])
                    for d in range(D):
                        s1[d] /= T
                    s2[:] = 0.0
                    for t in range(T):
                        for d in range(D):
                            v = np.float64(P[k, m, t, d]) - np.float64(P[k, m, 0, d]) - s1[d]
                            s2[d] += v * v
                    for d in range(D):
                        out[1, d] += s2[d] / (T - 1)
                        if want[4] and math.sqrt(s2[d] / T) <= const_tol:
                            out[4, d] += 1.0
                if want[2]:
                    for t in range(1, T - 1):
                        for d in range(D):
                            a = (
                                np.float64(P[k, m, t + 1, d])
                                - 2.0 * np.float64(P[k, m, t, d])
                                + np.float64(P[k, m, t - 1, d])
                            )
                            out[2, d] += a * a
                if want[3]:
                    for t in range(T):
                        for d in range(D):
                            dvs_mean[m, t, d] += np.float64(P[k, m, t, d]) - np.float64(P[0, m, t, d])
        if want[3] and N >= 2:
            dvs_mean /= N
            for m in range(M):  # clip 0 is 0 after the shift
                for t in range(T):
                    for d in range(D):
                        out[3, d] += dvs_mean[m, t, d] * dvs_mean[m, t, d]
            for k in range(1, N):
                for m in range(M):
                    for t in range(T):
                        for d in range(D):
                            v = np.float64(P[k, m, t, d]) - np.float64(P[0, m, t, d]) - dvs_mean[m, t, d]
                            out[3, d] += v * v
            for d in range(D):
                out[3, d] *= 2.0 / (N - 1)


def _diversity_numpy(P: np.ndarray, which: str, const_tol: float) -> np.ndarray:
    """One of :func:`_diversity_kernel`'s per-dimension totals with numpy, in chunks of clips or frames."""
    N, M, T, D = P.shape
    total = np.zeros(D)
    if which == "dvs":
        for sl in _clip_chunks(T, N * M * D * 8):
            x = np.asarray(P[:, :, sl], np.float64)
            total += 2.0 * np.var(x - x[:1], axis=0, ddof=1).sum(axis=(0, 1))
        return total
    for sl in _clip_chunks(N, M * T * D * 8):
        x = np.asarray(P[sl], np.float64)
        if which == "div":
            # Variance is shift invariant; shifting by sample 0 makes identical samples exactly 0.
            total += 2.0 * np.var(x - x[:, :1], axis=1, ddof=1).sum(axis=(0, 1))
        elif which == "var":
            total += np.var(x - x[:, :, :1], axis=2, ddof=1).sum(axis=(0, 1))
        elif which == "jitter":
            total += np.square(x[:, :, 2:] - 2 * x[:, :, 1:-1] + x[:, :, :-2]).sum(axis=(0, 1, 2))
        else:  # constant
            total += (x.std(axis=2) <= const_tol).sum(axis=(0, 1))
    return total


def _diversity_totals(
    P: np.ndarray, which: Sequence[str], const_tol: float = CONST_TOL
) -> dict[str, np.ndarray]:
    """``{name: per-dimension total}`` for names of :data:`_DIVERSITY`, compiled in one pass when possible."""
    if not _compiled.available():
        return {name: _diversity_numpy(P, name, const_tol) for name in which}
    want = np.array([name in which for name in _DIVERSITY])
    want[1] |= want[4]  # the constant count reuses the variance over frames
    out = np.zeros((len(_DIVERSITY), P.shape[-1]))
    _diversity_kernel(P, want, const_tol, out)
    return {name: out[_DIVERSITY.index(name)] for name in which}


def frdiv(P: np.ndarray, subsets: SubsetSpec = tuple(SUBSETS)) -> dict[str, float]:
    """FRDiv per subset: mean squared difference between two different samples of a clip.

    ``P`` ``[N, M, T, D]``. Per clip, frame and dim this is ``2 * var(ddof=1)`` over the ``M`` samples
    (the mean over ordered pairs ``i != j`` of ``(P_i - P_j)^2``); 0 when ``M == 1``.
    """
    P = _check_reactions(P)
    N, M, T, D = P.shape
    cols = resolve_subsets(subsets, D)
    if M < 2:
        return {name: 0.0 for name in cols}
    return _subset_means(_diversity_totals(P, ["div"])["div"] / (N * T), cols)


def frvar(P: np.ndarray, subsets: SubsetSpec = tuple(SUBSETS)) -> dict[str, float]:
    """FRVar per subset: mean over clips, samples and dims of the variance over time (ddof=1).

    ``P`` ``[N, M, T, D]``.
    """
    P = _check_reactions(P)
    N, M, T, D = P.shape
    cols = resolve_subsets(subsets, D)
    return _subset_means(_diversity_totals(P, ["var"])["var"] / (N * M), cols)


def jitter(P: np.ndarray, subsets: SubsetSpec = tuple(SUBSETS)) -> dict[str, float]:
    """Jitter per subset: mean over clips, samples, frames and dims of the squared acceleration.

    ``mean((x[t + 1] - 2 x[t] + x[t - 1])^2)`` over ``t = 1..T-2``: zero for motion at constant velocity,
    large for frame-to-frame shaking. Not a REACT metric: it measures directly the smoothness the
    paper's FBK prior is meant to bring (Table 4), which FRVar and FRDvs only reflect indirectly.
    ``P`` ``[N, M, T, D]`` with ``T >= 3``.
    """
    P = _check_reactions(P)
    N, M, T, D = P.shape
    if T < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {T}")
    cols = resolve_subsets(subsets, D)
    return _subset_means(_diversity_totals(P, ["jitter"])["jitter"] / (N * M * (T - 2)), cols)


def frdvs(P: np.ndarray, subsets: SubsetSpec = tuple(SUBSETS)) -> dict[str, float]:
    """FRDvs per subset: mean squared difference between reactions to two different speaker clips.

    ``P`` ``[N, M, T, D]``: for each sample index, ``2 * var(ddof=1)`` over the ``N`` clips per frame and
    dim (the mean over ordered pairs ``k != l`` of ``(P[k, i] - P[l, i])^2``), averaged over samples and
    frames. NaN when ``N < 2``.
    """
    P = _check_reactions(P)
    N, M, T, D = P.shape
    cols = resolve_subsets(subsets, D)
    if N < 2:
        return {name: math.nan for name in cols}
    return _subset_means(_diversity_totals(P, ["dvs"])["dvs"] / (M * T), cols)
