"""REACT evaluation metrics on 3DMM coefficients: appropriateness, diversity, synchrony and realism.

Inputs (numpy, FaceVerse units, any float dtype; computed in float64):

- ``P``: generated reactions ``[N, M, T, D]`` (``N`` speaker clips, ``M`` samples each).
- ``L``: every real listener reaction of the split ``[K, T, D]``, indexed like the doubled REACT examples.
- ``S``: the speaker behaviour of each clip ``[N, T, D]``.
- ``neighbours``: bool ``[N, K]``; ``A(k) = flatnonzero(neighbours[k])`` are the appropriate reactions to
  speaker clip ``k`` (row ``k`` of ``neighbour_emotion_<split>.npy``).

Every metric is computed for column subsets (:data:`SUBSETS`: ``all`` 0:58, ``expression`` 0:52, ``pose``
52:58, or any mapping of names to columns): per-dimension statistics over time, then a mean over the
subset's dimensions (FRDist instead sums its DTW over the subset, see below).

Conventions, compared with the public REACT 2023/2024 and ReactFace evaluation code (``metric/FR*.py``);
ReactDiff's own 3DMM evaluation code is not public:

- **FRCorr** (:func:`frcorr`): for clip ``k`` and sample ``i``, the max over ``j in A(k)`` of the CCC
  between ``P[k, i]`` and ``L[j]`` (per dimension over time, population moments, averaged over the
  subset's dimensions); summed over the ``M`` samples and averaged over clips, so the range is
  ``-M..M``. The public ``compute_FRC`` reports ``10 * mean`` over samples, the same number when
  ``M = 10``; its multiprocessing variant ``compute_FRC_mp`` multiplies the per-clip *sum* by 10 again
  (a 100x mean), which we do not repeat.
- **CCC on constant channels** (:func:`ccc`): ``2 cov / (var_x + var_y + (mean_x - mean_y)^2)`` is
  well defined unless both channels are constant with equal means (0/0); that case is perfect agreement
  and scores 1. A constant channel against a varying one, or two constants with different means, scores
  0, which is what the formula gives. The public code turns every constant channel into 0 (its
  ``nan_to_num`` of the Pearson factor), so a real reaction scored against itself loses its constant
  channels, which would explain GT scoring 9.48 rather than 10 in the paper (Table 1); here it scores
  exactly ``M`` whenever its own reaction is in ``A(k)``. "Constant" means a standard deviation at most
  ``const_tol`` (default 1e-8).
- **FRDist** (:func:`frdist`): for each ``k, i`` the min over ``j in A(k)`` of ``DTW(P[k, i], L[j])``,
  summed over the ``M`` samples and averaged over clips (the public ``compute_FRD`` reports
  ``10 * mean`` over samples: the same number for ``M = 10``; ``compute_FRD_mp`` multiplies the sum by 10
  again, not repeated here). The public code calls ``tslearn.metrics.dtw`` on the whole multivariate
  sequence (ReactFace's 3DMM code on all coefficients; the REACT challenge code on three groups of its
  25 emotion channels, weighted): one alignment with squared Euclidean local cost over the dimensions,
  and the square root of the best path's total cost. That is our default, ``dtw="euclidean"``, computed
  separately for each subset (one alignment per subset). ``dtw="abs"`` is the alternative of one
  alignment per dimension with ``|x - y|`` local cost, summed over the subset's dimensions: about 14x
  slower compiled (measured, three default subsets). DTW runs compiled (numba, ``backend="numba"``,
  :data:`LANES` alignments per call in SIMD lanes, float32 local costs on inputs centred in float64,
  float64 path sums; within 1e-6 relative of the float64 numpy reference, ``backend="numpy"``, which is
  kept for tests and machines without numba): 2.2 ns of CPU time per (pair, cell) for the three default
  subsets on an idle AMD EPYC (Zen 3) core, up to 2.7 ns when other processes share the cores and caches,
  so the REACT test set (322k alignments of 750 x 750 frames at 20 neighbours per clip) takes 390 to 490
  CPU seconds, 3.5 to 4 minutes on two cores (``workers=2``); see ``benchmarks/metrics.py``. Two
  alternatives were measured and not taken: local costs as a GEMM (``||x||^2 + ||y||^2 - 2 x.y``, float32
  sgemm) cost 1.55 ns per (pair, cell) before any dynamic programming, and the expanded form loses the
  exact zero of identical frames. Exact early abandoning of the min over ``A(k)`` (stop an alignment once
  a whole row of its cumulative costs exceeds the best found so far) is not done: on the benchmark's
  data the squared distances to the 20 neighbours spread by 1.5 % (relative std), so even knowing the
  best in advance would skip about 3 % of the rows, and a lane group can only stop when all its 16 pairs
  and three subsets can.
- **FRDiv** (:func:`frdiv`): mean over clips of the mean squared difference between two different
  samples of the same clip (ordered pairs ``i != j``), per frame and dimension; equal to the public
  ``compute_FRDiv``. Closed form used: ``2 * var(ddof=1)`` over the samples, averaged over frames and dims.
- **Jitter** (:func:`jitter`, not a REACT metric): the mean squared frame-to-frame acceleration, a
  direct measure of the smoothness the FBK prior is meant to bring (used by the Table 4 ablation).
- **FRVar** (:func:`frvar`): mean over clips, samples and dimensions of the variance over time, with the
  unbiased estimator (``ddof=1``) like the public ``torch.var``.
- **FRDvs** (:func:`frdvs`): for each sample index, the mean squared difference between the reactions to
  two different speaker clips (ordered pairs ``k != l``), per frame and dimension, averaged over samples;
  equal to the public ``compute_FRDvs`` (closed form ``2 * var(ddof=1)`` over clips).
- **FRSyn** (:func:`frsyn`): time-lagged cross-correlation between ``P[k, i]`` and ``S[k]`` at lags
  ``-max_lag..max_lag`` (default 49 frames, the public ``range(-(2 * 25 - 1), 2 * 25)``), where lag
  ``l > 0`` pairs ``P[k, i, t + l]`` with ``S[k, t]`` (the listener follows the speaker by ``l`` frames).
  At each lag the Pearson correlation of the overlapping parts is taken per dimension and averaged over
  the subset's valid dimensions; the score of a reaction is ``|lag|`` at the peak, and FRSyn is the mean
  over all clips and all samples. Three defects of the public ``compute_FRSyn_mp`` are not repeated:
  (1) it returns inside its sample loop, so only the first of the ``M`` samples is scored: we score all;
  (2) a channel constant in either sequence makes its Pearson correlation NaN, the NaN poisons the mean
  over dimensions at every lag, and ``argmax`` then returns the first lag, pinning the offset at the
  worst value 49 (consistent with Mirror scoring 42.65 on expression, Table 8, but 0 on pose, Table 9,
  although a mirror is perfectly synchronous): we exclude a channel
  at every lag where its overlapping part is constant in either sequence, and report the number of
  channels constant over the whole clip (``FRSyn_excluded_channels``); (3) a reaction with no valid
  channel at any lag has no defined peak: it is left out of the mean and counted
  (``FRSyn_excluded_reactions``). Ties keep the first (most negative) lag, as ``argmax`` does.
- **Realism** (:func:`frechet_distance`, :func:`window_features`, :func:`real_floor`): the Frechet
  distance between Gaussian fits of two sets of feature vectors, computed on windows of frames with a
  named extractor (``stats``: per-dimension mean and std of each window; ``dynamics``: per-dimension mean
  absolute velocity and acceleration) or any callable (a learned encoder plugs in here). The real floor
  is the distance between two random halves (by clip) of the real reactions: the value an ideal
  generator would reach at that sample size, reported beside each score. A third, learned feature
  (``FD_learned``: embeddings of a small temporal encoder trained on the train split's listeners,
  :mod:`reactdiff.realism`) enters :func:`compute_all` as a ``{subset: callable}`` feature kind.

:func:`compute_all` runs everything for every subset and returns ``{subset: {metric: value}}``. Cost at
the REACT test set's scale (``N = K = 1612``, ``M = 10``, ``T = 750``, 20 neighbours per clip; measured at
100 clips and scaled, ``python -m benchmarks.metrics``), in CPU seconds: FRDist 390 to 490 (above), the
learned FD 35, FRSyn 18, FRCorr 5, the stats and dynamics FDs 11, FRDiv, FRVar, FRDvs, Jitter and the
constant channels together 1 (one compiled pass over ``P``): 460 to 560 in all, under 5 minutes on two
cores with ``workers=2``. Peak memory is ``P`` (2.8 GB as float32) plus about 0.5 GB.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import as_strided

from reactdiff.layout import EXPRESSION, FPS, N_COEFFS, POSE

try:  # installed with scikit-learn (an MLflow dependency); optional
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - only slower under load without it
    threadpool_limits = None

try:  # compiled DTW (backend="numba", the default when installed); without it DTW falls back to numpy
    import numba
    from numba import types as _nbtypes
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic
    from numba.extending import overload as _overload
    from numba.np.arrayobj import make_array as _make_array
    from numba.np.arrayobj import populate_array as _populate_array
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = [
    "SUBSETS",
    "SYN_MAX_LAG",
    "CONST_TOL",
    "LANES",
    "FEATURE_EXTRACTORS",
    "resolve_subsets",
    "ccc",
    "dtw_euclidean",
    "dtw_abs",
    "frcorr",
    "frdist",
    "frdiv",
    "frvar",
    "frdvs",
    "tlcc",
    "frsyn",
    "window_features",
    "frechet_distance",
    "real_floor",
    "compute_all",
]

SUBSETS: dict[str, slice] = {"all": slice(0, N_COEFFS), "expression": EXPRESSION, "pose": POSE}
SYN_MAX_LAG = 2 * FPS - 1  # +-2 s at 25 fps, as the public code's range(-49, 50)
CONST_TOL = 1e-8  # a channel whose std is at most this is constant
DEFAULT_MAX_BYTES = 256 * 2**20  # working-memory budget for the batched DTW cost volumes

Columns = slice | Sequence[int] | np.ndarray
SubsetSpec = Sequence[str] | Mapping[str, Columns]


def resolve_subsets(subsets: SubsetSpec, n_dims: int) -> dict[str, np.ndarray]:
    """Names (keys of :data:`SUBSETS`) or a ``{name: columns}`` mapping -> ``{name: int column indices}``."""
    if isinstance(subsets, Mapping):
        items = list(subsets.items())
    else:
        unknown = [s for s in subsets if s not in SUBSETS]
        if unknown:
            raise ValueError(f"unknown subsets {unknown}; known: {sorted(SUBSETS)} (or pass a mapping)")
        items = [(s, SUBSETS[s]) for s in subsets]
    out: dict[str, np.ndarray] = {}
    for name, cols in items:
        idx = np.arange(n_dims)[cols] if isinstance(cols, slice) else np.asarray(cols, dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= n_dims:
            raise ValueError(f"subset {name!r} selects columns {idx.tolist()} outside 0..{n_dims - 1}")
        if len(np.unique(idx)) != idx.size:  # a repeated column would count twice in some metrics only
            raise ValueError(f"subset {name!r} repeats columns: {idx.tolist()}")
        out[name] = idx
    if not out:
        raise ValueError("no subsets requested")
    return out


def _check_reactions(P: np.ndarray) -> np.ndarray:
    P = np.asarray(P)
    if P.ndim != 4:
        raise ValueError(f"generated reactions must be [clips, samples, frames, dims], got shape {P.shape}")
    return P


def _neighbour_lists(neighbours: np.ndarray, n_clips: int, n_real: int) -> list[np.ndarray]:
    neighbours = np.asarray(neighbours)
    if neighbours.shape != (n_clips, n_real):
        raise ValueError(
            f"neighbour matrix has shape {neighbours.shape}, expected (clips, real reactions) = "
            f"({n_clips}, {n_real}): take the rows of the evaluated clips and all columns"
        )
    return [np.flatnonzero(row) for row in neighbours]


# ----------------------------------------------------------------------------------------------------------
# CCC and FRCorr


def ccc(x: np.ndarray, y: np.ndarray, const_tol: float = CONST_TOL) -> np.ndarray:
    """Concordance correlation coefficient per dimension over time.

    ``x``, ``y``: ``[..., T, D]`` (broadcastable) -> ``[..., D]``. Population (ddof=0) moments. Two
    constant channels with equal means (``var_x + var_y + (mean_x - mean_y)^2 <= const_tol^2``) score 1.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mx, my = x.mean(axis=-2), y.mean(axis=-2)
    xc, yc = x - mx[..., None, :], y - my[..., None, :]
    cov = (xc * yc).mean(axis=-2)
    den = (xc**2).mean(axis=-2) + (yc**2).mean(axis=-2) + (mx - my) ** 2
    return _ccc_ratio(cov, den, const_tol)


def _ccc_ratio(cov: np.ndarray, den: np.ndarray, const_tol: float) -> np.ndarray:
    agree = den <= const_tol**2  # only reachable when both channels are constant and equal
    return np.where(agree, 1.0, 2.0 * cov / np.where(agree, 1.0, den))


def _ccc_against(pk: np.ndarray, lj: np.ndarray, const_tol: float) -> np.ndarray:
    """CCC of every sample against every candidate: ``[M, T, D]`` x ``[J, T, D]`` -> ``[M, J, D]``."""
    mp_, ml = pk.mean(axis=1), lj.mean(axis=1)
    pc, lc = pk - mp_[:, None], lj - ml[:, None]
    t = pk.shape[1]
    cov = np.einsum("mtd,jtd->mjd", pc, lc, optimize=True) / t
    den = (pc**2).mean(axis=1)[:, None] + (lc**2).mean(axis=1)[None] + (mp_[:, None] - ml[None]) ** 2
    return _ccc_ratio(cov, den, const_tol)


if numba is not None:

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _centre(z, out, mean, var):
        """``out = z - mean`` over axis 0 of ``z`` ``[T, D]`` in float64; ``var``: population variance."""
        T, D = z.shape
        mean[:] = 0.0
        for t in range(T):
            for d in range(D):
                mean[d] += z[t, d]
        mean /= T
        var[:] = 0.0
        for t in range(T):
            for d in range(D):
                out[t, d] = z[t, d] - mean[d]
                var[d] += out[t, d] * out[t, d]
        var /= T

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _frcorr_kernel(P, L, nb_idx, nb_ptr, sub_cols, sub_ptr, const_tol, out):
        """FRCorr's per-clip sums ``out[k, s] = sum_i max_{j in A(k)} mean_{d in s} CCC(P[k, i], L[j])_d``.

        ``A(k) = nb_idx[nb_ptr[k]:nb_ptr[k + 1]]``; subset ``s`` is ``sub_cols[sub_ptr[s]:sub_ptr[s + 1]]``.
        The same population moments and centring as :func:`_ccc_against`, in float64, with the cross sums
        of all (sample, neighbour) pairs accumulated frame by frame so that the clip's data is read once
        (about 20x faster than the per-clip numpy path). NaN inputs give NaN, as with numpy's max.
        """
        N, M, T, D = P.shape
        S = sub_ptr.shape[0] - 1
        J_max = 0
        for k in range(N):
            J_max = max(J_max, nb_ptr[k + 1] - nb_ptr[k])
        xc = np.empty((M, T, D))
        mx = np.empty((M, D))
        vx = np.empty((M, D))
        yc = np.empty((J_max, T, D))
        my = np.empty((J_max, D))
        vy = np.empty((J_max, D))
        cov = np.empty((J_max, M, D))
        for k in range(N):
            J = nb_ptr[k + 1] - nb_ptr[k]
            if J == 0:
                continue
            for m in range(M):
                _centre(P[k, m], xc[m], mx[m], vx[m])
            for jj in range(J):
                _centre(L[nb_idx[nb_ptr[k] + jj]], yc[jj], my[jj], vy[jj])
            cov[:J] = 0.0
            for t in range(T):
                for jj in range(J):
                    for m in range(M):
                        for d in range(D):
                            cov[jj, m, d] += xc[m, t, d] * yc[jj, t, d]
            for s in range(S):
                n_cols = sub_ptr[s + 1] - sub_ptr[s]
                total = 0.0
                for m in range(M):
                    best = -np.inf
                    for jj in range(J):
                        acc = 0.0
                        for c in range(sub_ptr[s], sub_ptr[s + 1]):
                            d = sub_cols[c]
                            diff = mx[m, d] - my[jj, d]
                            den = vx[m, d] + vy[jj, d] + diff * diff
                            acc += 1.0 if den <= const_tol * const_tol else 2.0 * (cov[jj, m, d] / T) / den
                        value = acc / n_cols
                        if not math.isnan(best) and (math.isnan(value) or value > best):
                            best = value  # a NaN, once met, stays: numpy's max propagates it
                    total += best
                out[k, s] = total


def frcorr(
    P: np.ndarray,
    L: np.ndarray,
    neighbours: np.ndarray,
    subsets: SubsetSpec = tuple(SUBSETS),
    const_tol: float = CONST_TOL,
) -> dict[str, float]:
    """FRCorr per subset: mean over clips of ``sum_i max_{j in A(k)} CCC(P[k, i], L[j])``.

    ``P`` ``[N, M, T, D]``, ``L`` ``[K, T, D]``, ``neighbours`` bool ``[N, K]``. Clips with an empty
    ``A(k)`` are left out (count them with :func:`compute_all`); NaN when no clip has a neighbour.
    Compiled when numba is installed (a numpy path otherwise; they agree to rounding).
    """
    P = _check_reactions(P)
    L = np.asarray(L)
    cols = resolve_subsets(subsets, P.shape[-1])
    lists = _neighbour_lists(neighbours, P.shape[0], len(L))
    ks = [k for k, js in enumerate(lists) if js.size]
    if not ks:
        return {name: math.nan for name in cols}
    if numba is not None and P.dtype in (np.float32, np.float64) and L.dtype in (np.float32, np.float64):
        if L.shape[1:] != P.shape[2:]:
            raise ValueError(f"real reactions {L.shape} and generated {P.shape} differ in frames or dims")
        ptr = np.concatenate([[0], np.cumsum([len(js) for js in lists])]).astype(np.int64)
        idx = np.concatenate(lists).astype(np.int64)
        sub_cols = np.concatenate(list(cols.values())).astype(np.int64)
        sub_ptr = np.concatenate([[0], np.cumsum([len(c) for c in cols.values()])]).astype(np.int64)
        sums = np.zeros((P.shape[0], len(cols)))
        _frcorr_kernel(P, L, idx, ptr, sub_cols, sub_ptr, const_tol, sums)
        return {name: float(sums[ks, s].mean()) for s, name in enumerate(cols)}
    per_clip: dict[str, list[float]] = {name: [] for name in cols}
    for k in ks:
        c = _ccc_against(np.asarray(P[k], np.float64), np.asarray(L[lists[k]], np.float64), const_tol)
        for name, idx in cols.items():
            per_clip[name].append(float(c[..., idx].mean(axis=-1).max(axis=1).sum()))
    return {name: float(np.mean(v)) for name, v in per_clip.items()}


# ----------------------------------------------------------------------------------------------------------
# DTW, numpy reference (backend="numpy"): anti-diagonal dynamic programming, vectorised over a batch of
# independent alignments; float64 path sums (of float64 costs for euclidean, float32 for abs). Kept as the
# reference that the compiled kernels are tested against, and for machines without numba.


def _dtw_accumulate(cost: np.ndarray, band: int | None = None) -> np.ndarray:
    """Total cost of the best warping path through each of a batch of local-cost matrices.

    ``cost``: ``[T, U, *batch]`` with any strides; fastest with the batch innermost and contiguous, so
    every step is a contiguous vector op. Returns ``[*batch]`` float64. Steps (1, 0), (0, 1), (1, 1);
    paths from (0, 0) to (T-1, U-1). Cells on one anti-diagonal ``i + j = d`` depend only on the two
    previous anti-diagonals, so each of the ``T + U - 1`` steps is three elementwise ops over
    ``[cells on the diagonal, *batch]``, and that diagonal is a strided view of ``cost`` (stride
    ``stride_t - stride_u``), so nothing is copied. ``band``: Sakoe-Chiba radius, cells ``|i - j| <= band``.
    """
    T, U = cost.shape[:2]
    batch = cost.shape[2:]
    st, su = cost.strides[:2]
    sb = cost.strides[2:]
    if band is not None and band < abs(T - U):
        raise ValueError(f"Sakoe-Chiba band {band} cannot reach the end cell of a {T} x {U} alignment")
    # Rows of the three rotating diagonal buffers are i + 1; row 0 is a permanent +inf sentinel for i = -1.
    bufs = [np.full((T + 1, *batch), np.inf) for _ in range(3)]
    written: list[tuple[int, int] | None] = [None, None, None]
    tmp = np.empty((T, *batch))
    # skew[d, i] is cost[i, d - i]; only in-range cells are ever read.
    skew = as_strided(cost, shape=(T + U - 1, T, *batch), strides=(su, st - su, *sb), writeable=False)
    for d in range(T + U - 1):
        lo, hi = max(0, d - U + 1), min(T - 1, d)
        if band is not None:
            lo, hi = max(lo, (d - band + 1) // 2), min(hi, (d + band) // 2)
        cur = bufs[d % 3]
        if band is not None:
            # A banded diagonal can start below cells that an older diagonal left in this buffer.
            old = written[d % 3]
            if old is not None:
                cur[old[0] + 1 : old[1] + 2] = np.inf
            written[d % 3] = (lo, hi)
        if hi < lo:
            continue
        diag = skew[d, lo : hi + 1]
        if d == 0:
            cur[1] = diag[0]
            continue
        p1, p2 = bufs[(d - 1) % 3], bufs[(d - 2) % 3]
        t = tmp[: hi - lo + 1]
        np.minimum(p1[lo : hi + 1], p1[lo + 1 : hi + 2], out=t)  # from (i-1, j) and (i, j-1)
        np.minimum(t, p2[lo : hi + 1], out=t)  # from (i-1, j-1)
        np.add(t, diag, out=cur[lo + 1 : hi + 2])
    return bufs[(T + U - 2) % 3][T].copy()


def _augment(z: np.ndarray, side: str) -> np.ndarray:
    """``[..., d] -> [..., d + 2]`` with ``augment(a, "row") . augment(b, "col") = ||a - b||^2``.

    One GEMM of augmented vectors then yields a whole squared-distance matrix, norms included. The expanded
    form ``||a||^2 + ||b||^2 - 2 a.b`` loses precision to cancellation when the norms are large, so callers
    centre both sides on a common point first (distances do not change).
    """
    sq = (z**2).sum(axis=-1, keepdims=True)
    one = np.ones_like(sq)
    return np.concatenate([z, sq, one] if side == "row" else [-2.0 * z, one, sq], axis=-1)


def _dtw_euclidean_numpy(
    x: np.ndarray, y: np.ndarray, band: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Multivariate DTW as ``tslearn.metrics.dtw``: ``sqrt`` of the best path's summed ``||x_t - y_u||^2``.

    ``x`` ``[B, T, D]``, ``y`` ``[B, U, D]`` -> ``[B]``. ``band``: Sakoe-Chiba radius (None = exact).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 3 or y.ndim != 3 or len(x) != len(y) or x.shape[2] != y.shape[2]:
        raise ValueError(f"expected x [B, T, D] and y [B, U, D], got {x.shape} and {y.shape}")
    B, T, _ = x.shape
    U = y.shape[1]
    step = max(1, max_bytes // (8 * T * U))
    out = np.empty(B)
    for s in range(0, B, step):
        e = min(B, s + step)
        cost = np.empty((e - s, U, T))
        for b in range(s, e):
            centre = y[b].mean(axis=0)
            np.matmul(_augment(y[b] - centre, "row"), _augment(x[b] - centre, "col").T, out=cost[b - s])
        # DTW is symmetric, so aligning y to x (cost [U, T]) gives the same distance.
        out[s:e] = np.sqrt(np.maximum(_dtw_accumulate(cost.transpose(1, 2, 0), band), 0.0))
    return out


def _dtw_abs_numpy(
    x: np.ndarray, y: np.ndarray, band: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> np.ndarray:
    """Per-dimension DTW with ``|x - y|`` local cost: one alignment per dimension.

    ``x`` ``[B, T, D]``, ``y`` ``[B, U, D]`` -> ``[B, D]`` (sum over dimensions for a subset's distance).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 3 or y.ndim != 3 or len(x) != len(y) or x.shape[2] != y.shape[2]:
        raise ValueError(f"expected x [B, T, D] and y [B, U, D], got {x.shape} and {y.shape}")
    B, T, D = x.shape
    U = y.shape[1]
    step = max(1, max_bytes // (4 * T * U * D))
    out = np.empty((B, D))
    cost = np.empty((T, U, min(B, step), D), np.float32)
    for s in range(0, B, step):
        e = min(B, s + step)
        for b in range(s, e):
            _abs_cost_into(cost[:, :, b - s], x[b], y[b])
        out[s:e] = _dtw_accumulate(cost[:, :, : e - s], band)
    return out


def _abs_cost_into(out: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """``out[t, u, d] = |x[t, d] - y[u, d]|`` in row blocks (``out`` ``[T, U, D]``, any float dtype)."""
    for t0 in range(0, len(x), 64):  # keeps the float64 [rows, U, D] temporary small
        out[t0 : t0 + 64] = np.abs(x[t0 : t0 + 64, None, :] - y[None])


def _cost_plan(cols: Sequence[np.ndarray]) -> list[tuple[int, list[int] | None]]:
    """For each subset: ``None`` (one GEMM on its columns) or the subsets whose costs sum to its own.

    Squared Euclidean costs add over disjoint columns, so ``all`` is ``expression + pose`` when both are
    requested: one addition instead of a third GEMM. Sums are listed after their parts.
    """
    sets = [frozenset(c.tolist()) for c in cols]
    plan: list[tuple[int, list[int] | None]] = []
    sums: list[tuple[int, list[int]]] = []
    for s, cs in enumerate(sets):
        parts = [r for r, cr in enumerate(sets) if r != s and cr < cs]
        # Only a cover by pairwise disjoint parts that are not themselves sums.
        disjoint = all(not (sets[a] & sets[b]) for i, a in enumerate(parts) for b in parts[i + 1 :])
        if parts and disjoint and frozenset().union(*(sets[r] for r in parts)) == cs:
            sums.append((s, parts))
        else:
            plan.append((s, None))
    gemm = {s for s, p in plan}
    for s, parts in sums:
        plan.append((s, parts if set(parts) <= gemm else None))
    return plan


def _min_dtw_euclidean(
    P: np.ndarray,
    L: np.ndarray,
    lists: Sequence[np.ndarray],
    ks: Sequence[int],
    cols: Sequence[np.ndarray],
    band: int | None,
    max_bytes: int,
) -> dict[int, np.ndarray]:
    """``{k: [M, n_subsets]}``: min over ``A(k)`` of the multivariate DTW, for clips ``ks``.

    Layout: one float64 cost volume ``[U, T, (subset, neighbour, sample)]`` with the batch innermost and
    contiguous, which is what the DP reads fastest. A batched GEMM of one neighbour's frames against all
    ``M`` samples writes its ``[T, U, M]`` block straight into the volume (BLAS takes the strided output),
    so nothing is transposed or copied. The volume aligns ``L[j]`` to ``P[k, i]``: DTW is symmetric.
    """
    M, T, _ = P.shape[1:]
    U = L.shape[1]
    S = len(cols)
    plan = _cost_plan(cols)
    most = max(len(lists[k]) for k in ks)
    per_fill = max(1, min(most, max_bytes // (8 * U * T * S * M)))
    volume = np.empty((U, T, S * per_fill * M))  # reused: a fresh 100 MB array costs page faults each time
    out: dict[int, np.ndarray] = {}
    for k in ks:
        js = lists[k]
        x = np.asarray(P[k], np.float64)  # [M, T, D]
        ys = np.asarray(L[js], np.float64)  # [J, U, D]
        centre = ys.mean(axis=(0, 1))
        x, ys = x - centre, ys - centre
        xs = {
            s: np.ascontiguousarray(_augment(x[..., cols[s]], "col").transpose(1, 2, 0))  # [T, d + 2, M]
            for s, parts in plan
            if parts is None
        }
        dist = np.empty((M, S, len(js)))
        for j0 in range(0, len(js), per_fill):
            n = min(per_fill, len(js) - j0)
            vol = volume[:, :, : S * n * M]
            blocks = vol.reshape(U, T, S, n, M)
            for jj in range(n):
                for s, parts in plan:
                    dst = blocks[:, :, s, jj]  # [U, T, M]
                    if parts is None:
                        ya = _augment(ys[j0 + jj][:, cols[s]], "row")  # [U, d + 2]
                        np.matmul(ya, xs[s], out=dst.transpose(1, 0, 2))
                    else:
                        np.add(blocks[:, :, parts[0], jj], blocks[:, :, parts[1], jj], out=dst)
                        for r in parts[2:]:
                            dst += blocks[:, :, r, jj]
            acc = _dtw_accumulate(vol, band).reshape(S, n, M)
            dist[:, :, j0 : j0 + n] = np.sqrt(np.maximum(acc, 0.0)).transpose(2, 0, 1)
        out[k] = dist.min(axis=2)
    return out


def _min_dtw_abs(
    P: np.ndarray,
    L: np.ndarray,
    lists: Sequence[np.ndarray],
    ks: Sequence[int],
    cols: Sequence[np.ndarray],
    band: int | None,
    max_bytes: int,
) -> dict[int, np.ndarray]:
    """``{k: [M, n_subsets]}``: min over ``A(k)`` of the per-dimension ``|x - y|`` DTWs summed per subset.

    Every dimension of every (sample, neighbour) pair is one alignment; the cost volume ``[T, U, pair, D]``
    (float32) holds as many pairs as ``max_bytes`` allows.
    """
    M, T, D = P.shape[1:]
    U = L.shape[1]
    most = max(len(lists[k]) for k in ks) * M
    per_fill = max(1, min(most, max_bytes // (4 * T * U * D)))
    volume = np.empty((T, U, per_fill, D), np.float32)
    out: dict[int, np.ndarray] = {}
    for k in ks:
        js = lists[k]
        x = np.asarray(P[k], np.float64)
        pairs = [(m, j) for j in range(len(js)) for m in range(M)]
        per_dim = np.empty((M, len(js), D))
        for p0 in range(0, len(pairs), per_fill):
            chunk = pairs[p0 : p0 + per_fill]
            for q, (m, j) in enumerate(chunk):
                _abs_cost_into(volume[:, :, q], x[m], np.asarray(L[js[j]], np.float64))
            acc = _dtw_accumulate(volume[:, :, : len(chunk)], band)  # [pairs, D]
            for q, (m, j) in enumerate(chunk):
                per_dim[m, j] = acc[q]
        out[k] = np.stack([per_dim[:, :, c].sum(axis=-1).min(axis=1) for c in cols], axis=1)
    return out


def _min_dtw(
    P: np.ndarray,
    L: np.ndarray,
    lists: Sequence[np.ndarray],
    ks: Sequence[int],
    cols: Sequence[np.ndarray],
    mode: str,
    band: int | None,
    max_bytes: int,
) -> dict[int, np.ndarray]:
    fn = _min_dtw_euclidean if mode == "euclidean" else _min_dtw_abs
    return fn(P, L, lists, ks, cols, band, max_bytes)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    return threadpool_limits(1) if threadpool_limits is not None else contextlib.nullcontext()


_WORKER_STATE: dict[str, object] = {}


def _pool_init(L: np.ndarray, P: np.ndarray, lists: list[np.ndarray]) -> None:
    _WORKER_STATE.update(L=L, P=P, lists=lists)
    if threadpool_limits is not None:
        threadpool_limits(1)  # the processes share the cores; threaded BLAS in each would oversubscribe them


def _pool_task(ks: list[int], cols: list[np.ndarray], mode: str, band: int | None, max_bytes: int):
    st = _WORKER_STATE
    return _min_dtw(st["P"], st["L"], st["lists"], ks, cols, mode, band, max_bytes)  # type: ignore[arg-type]


def _pool_context() -> mp.context.BaseContext:
    # fork shares P and L with the workers without pickling them; elsewhere they are sent once per worker.
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


# ----------------------------------------------------------------------------------------------------------
# DTW, compiled (backend="numba"): LANES alignments at once, one per SIMD lane
#
# One kernel call aligns LANES (x, y) pairs row by row with a single float64 row buffer per subset. Every
# step of the recurrence is the same for all lanes, so lanes are the innermost, contiguous axis of every
# array and each step is a handful of vector instructions. Pairs that share their y (one real reaction
# against many generated ones, which is how FRDist's pairs come) broadcast y from memory; otherwise y has a
# lane axis too. Local costs are float32 (inputs are first centred on the mean of y in float64, so no
# precision is lost to large offsets); path sums are float64. Measured on AMD EPYC (Zen 3, AVX2) at T = U =
# 750, 58 dims, three subsets: 2.2 ns of CPU time per (pair, cell) with shared y (5.3 cycles at 2.45 GHz;
# the 58 subtractions and 58 FMAs per pair and cell alone need 3.6), about 5 ns without.
#
# Codegen notes, all measured: the per-lane accumulators and the diagonal / left carries live on the stack
# (_stack_array), because LLVM keeps heap arrays in memory (it cannot rule out aliasing), 2x slower; flat
# indices are cast to uint64 so that numba emits no negative-index wraparound, which otherwise blocks
# vectorisation of the recurrence; fastmath is limited to "contract" (fused multiply-add) since the row
# buffers use inf sentinels that the no-infs flag of full fastmath would let LLVM assume away.

LANES = 16  # alignments per kernel call: two AVX2 vectors of float32
_UBLOCK = 4  # columns whose costs accumulate together in registers
_SPAN = 8  # columns per dynamic-programming pass over the buffered costs
_MAX_SUBSETS = 3  # subsets per euclidean kernel call (each is the sum of at most two column atoms)
_CARRY = _MAX_SUBSETS * LANES  # a literal for _stack_array: the per-subset diagonal / left carries


def _lane(row, d, l):  # pragma: no cover - compiled code uses the overload below
    """``row[d]`` for a shared ``y`` row ``[Dk]``, ``row[d, l]`` for a per-lane row ``[Dk, LANES]``."""
    return row[d] if row.ndim == 1 else row[d, l]


if numba is not None:
    _u64 = numba.uint64
    _JIT = {"nogil": True, "cache": True, "fastmath": {"contract"}}

    @_intrinsic
    def _stack_array(typingctx, size, dtype):
        """A 1-D array of literal ``size`` on the stack, which LLVM may keep in registers."""
        if not isinstance(size, _nbtypes.IntegerLiteral) or not isinstance(dtype, _nbtypes.NumberClass):
            return None
        n = size.literal_value
        array_type = _nbtypes.Array(dtype.dtype, 1, "C")

        def codegen(context, builder, signature, args):
            element = context.get_value_type(dtype.dtype)
            itemsize = context.get_abi_sizeof(element)
            intp = context.get_value_type(_nbtypes.intp)
            array = _make_array(array_type)(context, builder)
            _populate_array(
                array,
                data=_cgutils.alloca_once(builder, element, size=n),
                shape=[intp(n)],
                strides=[intp(itemsize)],
                itemsize=intp(itemsize),
                meminfo=None,
            )
            return array._getvalue()

        return array_type(size, dtype), codegen

    @_overload(_lane, inline="always")
    def _lane_overload(row, d, l):
        if row.ndim == 1:
            return lambda row, d, l: row[d]
        return lambda row, d, l: row[d, l]

    @numba.njit(inline="always")
    def _dp_span(Rs, Cs, diag, left, s, o):
        """The recurrence over ``_SPAN`` columns for all lanes: ``Rs[o + q * LANES + l]`` in place.

        ``Rs`` flat row buffer of one subset (cell ``(u, l)`` at ``(u + 1) * LANES + l``), ``Cs`` the
        span's local costs ``[_SPAN * LANES]``, ``diag``/``left`` the carried cells ``(i - 1, u - 1)`` and
        ``(i, u - 1)`` of subset ``s``.
        """
        for l in range(LANES):
            dg = diag[s * LANES + l]
            lf = left[s * LANES + l]
            for q in range(_SPAN):
                k = _u64(o + q * LANES + l)
                up = Rs[k]
                m = dg if dg < up else up
                m = m if m < lf else lf
                lf = m + Cs[_u64(q * LANES + l)]
                Rs[k] = lf
                dg = up
            diag[s * LANES + l] = dg
            left[s * LANES + l] = lf

    @numba.njit(**_JIT)
    def _row_bounds(i, U, band):
        if band < 0:
            return 0, U - 1
        return max(0, i - band), min(U - 1, i + band)

    @numba.njit(**_JIT)
    def _sq_kernel(xg, y, bounds, weights, band, R, C, out):
        """Squared-Euclidean DTW of ``LANES`` pairs for up to three subsets; ``out[s, l]`` = best path cost.

        ``xg`` ``[T, Dk, LANES]`` float32; ``y`` ``[U + _SPAN, Dk]`` (shared) or ``[U + _SPAN, Dk, LANES]``
        float32, rows from ``U`` on zero; the columns are two atoms, ``bounds[0]:bounds[1]`` and
        ``bounds[2]:bounds[3]``, and subset ``s`` costs ``weights[s, 0] * atom_a + weights[s, 1] *
        atom_b`` (``weights`` ``[S, 2]`` float32 of 0/1). ``band``: Sakoe-Chiba radius, -1 for none.
        Scratch: ``R`` ``[S, (U + _SPAN + 1) * LANES]`` float64, ``C`` ``[S, _SPAN * LANES]`` float32.
        ``out`` ``[S, LANES]``.
        """
        T = xg.shape[0]
        U = y.shape[0] - _SPAN
        S = weights.shape[0]
        a0 = _stack_array(LANES, np.float32)
        a1 = _stack_array(LANES, np.float32)
        a2 = _stack_array(LANES, np.float32)
        a3 = _stack_array(LANES, np.float32)
        b0 = _stack_array(LANES, np.float32)
        b1 = _stack_array(LANES, np.float32)
        b2 = _stack_array(LANES, np.float32)
        b3 = _stack_array(LANES, np.float32)
        diag = _stack_array(_CARRY, np.float64)
        left = _stack_array(_CARRY, np.float64)
        R[:] = np.inf
        R[:, :LANES] = 0.0  # the virtual cell (-1, -1) before the first row
        for i in range(T):
            xi = xg[_u64(i)]
            lo, hi = _row_bounds(i, U, band)
            for s in range(S):
                for l in range(LANES):
                    diag[s * LANES + l] = R[s, lo * LANES + l]
                    left[s * LANES + l] = np.inf
            for us in range(lo, hi + 1, _SPAN):
                # Local costs of the span's columns, _UBLOCK columns x LANES lanes accumulated in registers.
                for ub in range(0, _SPAN, _UBLOCK):
                    u0 = us + ub
                    y0 = y[_u64(u0)]
                    y1 = y[_u64(u0 + 1)]
                    y2 = y[_u64(u0 + 2)]
                    y3 = y[_u64(u0 + 3)]
                    for l in range(LANES):
                        a0[l] = 0.0
                        a1[l] = 0.0
                        a2[l] = 0.0
                        a3[l] = 0.0
                        b0[l] = 0.0
                        b1[l] = 0.0
                        b2[l] = 0.0
                        b3[l] = 0.0
                    for d in range(bounds[0], bounds[1]):
                        du = _u64(d)
                        xd = xi[du]
                        for l in range(LANES):
                            xv = xd[l]
                            t0 = xv - _lane(y0, du, l)
                            t1 = xv - _lane(y1, du, l)
                            t2 = xv - _lane(y2, du, l)
                            t3 = xv - _lane(y3, du, l)
                            a0[l] += t0 * t0
                            a1[l] += t1 * t1
                            a2[l] += t2 * t2
                            a3[l] += t3 * t3
                    for d in range(bounds[2], bounds[3]):
                        du = _u64(d)
                        xd = xi[du]
                        for l in range(LANES):
                            xv = xd[l]
                            t0 = xv - _lane(y0, du, l)
                            t1 = xv - _lane(y1, du, l)
                            t2 = xv - _lane(y2, du, l)
                            t3 = xv - _lane(y3, du, l)
                            b0[l] += t0 * t0
                            b1[l] += t1 * t1
                            b2[l] += t2 * t2
                            b3[l] += t3 * t3
                    # Columns past the band or the end are unreachable: infinite cost.
                    p0 = np.float32(0.0) if u0 <= hi else np.float32(np.inf)
                    p1 = np.float32(0.0) if u0 + 1 <= hi else np.float32(np.inf)
                    p2 = np.float32(0.0) if u0 + 2 <= hi else np.float32(np.inf)
                    p3 = np.float32(0.0) if u0 + 3 <= hi else np.float32(np.inf)
                    for s in range(S):
                        wa = weights[s, 0]
                        wb = weights[s, 1]
                        Cs = C[s]
                        o = ub * LANES
                        for l in range(LANES):
                            Cs[_u64(o + l)] = wa * a0[l] + wb * b0[l] + p0
                            Cs[_u64(o + LANES + l)] = wa * a1[l] + wb * b1[l] + p1
                            Cs[_u64(o + 2 * LANES + l)] = wa * a2[l] + wb * b2[l] + p2
                            Cs[_u64(o + 3 * LANES + l)] = wa * a3[l] + wb * b3[l] + p3
                for s in range(S):
                    _dp_span(R[s], C[s], diag, left, s, (us + 1) * LANES)
            if i == 0:
                R[:, :LANES] = np.inf
        for s in range(S):
            for l in range(LANES):
                out[s, l] = R[s, U * LANES + l]

    @numba.njit(**_JIT)
    def _abs_kernel(xg, y, band, R, C, out):
        """Per-dimension DTW with ``|x - y|`` local cost of ``LANES`` pairs: ``out[d, l]`` = best path cost.

        ``xg`` ``[T, Dk, LANES]`` float32, ``y`` as for :func:`_sq_kernel`; scratch ``R``
        ``[1, (U + _SPAN + 1) * LANES]`` float64 and ``C`` ``[1, _SPAN * LANES]`` float32; ``out``
        ``[Dk, LANES]``. One dimension at a time keeps the row buffer in cache.
        """
        T, Dk = xg.shape[0], xg.shape[1]
        U = y.shape[0] - _SPAN
        diag = _stack_array(LANES, np.float64)
        left = _stack_array(LANES, np.float64)
        Rs = R[0]
        Cs = C[0]
        for d in range(Dk):
            du = _u64(d)
            Rs[:] = np.inf
            Rs[:LANES] = 0.0
            for i in range(T):
                xd = xg[_u64(i), du]
                lo, hi = _row_bounds(i, U, band)
                for l in range(LANES):
                    diag[l] = Rs[lo * LANES + l]
                    left[l] = np.inf
                for us in range(lo, hi + 1, _SPAN):
                    for q in range(_SPAN):
                        yq = y[_u64(us + q)]
                        pen = np.float32(0.0) if us + q <= hi else np.float32(np.inf)
                        for l in range(LANES):
                            Cs[_u64(q * LANES + l)] = abs(xd[l] - _lane(yq, du, l)) + pen
                    _dp_span(Rs, Cs, diag, left, 0, (us + 1) * LANES)
                if i == 0:
                    Rs[:LANES] = np.inf
            for l in range(LANES):
                out[d, l] = Rs[U * LANES + l]

    @numba.njit(nogil=True, cache=True)
    def _gather_lanes(P, ks, ms, cols, centre, xg):
        """``xg[t, c, l] = P[ks[l], ms[l], t, cols[c]] - centre[l, c]`` in float32; True if all finite.

        ``P`` ``[N, M, T, D]``; lanes past ``len(ks)`` repeat lane 0 (their results are discarded).
        """
        n = ks.shape[0]
        finite = True
        for l in range(LANES):
            src = l if l < n else 0
            k, m = ks[src], ms[src]
            for t in range(xg.shape[0]):
                for c in range(cols.shape[0]):
                    v = P[k, m, t, cols[c]] - centre[src, c]
                    if not np.isfinite(v):
                        finite = False
                    xg[t, c, l] = v
        return finite


_NUMPY_FALLBACK_WARNED = False


def _use_numba(backend: str) -> bool:
    """Resolve ``backend`` ("auto", "numba" or "numpy") to whether the compiled kernels run."""
    global _NUMPY_FALLBACK_WARNED
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
    if backend == "numpy":
        return False
    if numba is not None:
        return True
    if backend == "numba":
        raise ImportError("the compiled DTW needs numba: pip install numba (or pass backend='numpy')")
    if not _NUMPY_FALLBACK_WARNED:
        warnings.warn(
            "numba is not installed: DTW falls back to the numpy implementation, about 10x slower (over "
            "half an hour for FRDist on the REACT test set); pip install numba",
            RuntimeWarning,
            stacklevel=3,
        )
        _NUMPY_FALLBACK_WARNED = True
    return False


def _check_band(band: int | None, T: int, U: int) -> int:
    """Sakoe-Chiba radius as the kernels take it (-1: none), checked against the lengths."""
    if T < 1 or U < 1:
        raise ValueError(f"DTW needs at least one frame on each side, got {T} and {U}")
    if band is None:
        return -1
    if band < abs(T - U):
        raise ValueError(f"Sakoe-Chiba band {band} cannot reach the end cell of a {T} x {U} alignment")
    return int(band)


class _SqGroup(NamedTuple):
    """Subsets aligned by one :func:`_sq_kernel` call: their columns as two atoms and 0/1 weights."""

    subsets: np.ndarray  # [S] int: positions in the caller's subset list
    cols: np.ndarray  # [Dk] int: data columns, atom a then atom b
    bounds: np.ndarray  # [4] int64: atom a = cols[bounds[0]:bounds[1]], atom b = cols[bounds[2]:bounds[3]]
    weights: np.ndarray  # [S, 2] float32: subset s = weights[s, 0] * atom a + weights[s, 1] * atom b


def _atoms(cols: Sequence[np.ndarray]) -> list[tuple[np.ndarray, tuple[bool, ...]]]:
    """The union of ``cols`` split by membership: ``[(columns, in_subset flags)]``, in first-seen order."""
    union = list(dict.fromkeys(int(c) for cs in cols for c in cs))
    members = [set(cs.tolist()) for cs in cols]
    by_flags: dict[tuple[bool, ...], list[int]] = {}
    for c in union:
        by_flags.setdefault(tuple(c in m for m in members), []).append(c)
    return [(np.asarray(cs, np.int64), flags) for flags, cs in by_flags.items()]


def _sq_groups(cols: Sequence[np.ndarray]) -> list[_SqGroup]:
    """Pack subsets greedily into kernel calls of at most three subsets and two atoms each.

    Squared costs add over disjoint columns, so a subset's local cost is the sum of its atoms' and one pass
    over the union's columns serves every subset of a call: the default (all, expression, pose) is one call
    over 58 columns with atoms expression (52) and pose (6).
    """
    groups: list[list[int]] = []
    for s in range(len(cols)):
        fits = groups and len(groups[-1]) < _MAX_SUBSETS
        if fits and len(_atoms([cols[r] for r in groups[-1] + [s]])) <= 2:
            groups[-1].append(s)
        else:
            groups.append([s])
    out = []
    for members in groups:
        atoms = _atoms([cols[s] for s in members])
        a_cols, a_flags = atoms[0]
        b_cols, b_flags = atoms[1] if len(atoms) > 1 else (np.zeros(0, np.int64), (False,) * len(members))
        na, nb = len(a_cols), len(b_cols)
        out.append(
            _SqGroup(
                subsets=np.asarray(members),
                cols=np.concatenate([a_cols, b_cols]),
                bounds=np.array([0, na, na, na + nb], np.int64),
                weights=np.array([[a_flags[i], b_flags[i]] for i in range(len(members))], np.float32),
            )
        )
    return out


class _LanePlan(NamedTuple):
    """What to align and how to reduce it: squared-Euclidean groups, or the abs mode's columns."""

    mode: str  # "euclidean" (values: squared path costs) or "abs" (values: per-subset sums of per-dim DTW)
    n_subsets: int
    groups: list[_SqGroup]  # euclidean
    abs_cols: np.ndarray  # abs: union of the subsets' columns
    abs_positions: list[np.ndarray]  # abs: each subset's positions in abs_cols


def _lane_plan(cols: Sequence[np.ndarray], mode: str) -> _LanePlan:
    if mode == "euclidean":
        return _LanePlan(mode, len(cols), _sq_groups(cols), np.zeros(0, np.int64), [])
    union = np.asarray(list(dict.fromkeys(int(c) for cs in cols for c in cs)), np.int64)
    where = {int(c): i for i, c in enumerate(union)}
    return _LanePlan(mode, len(cols), [], union, [np.array([where[int(c)] for c in cs]) for cs in cols])


def _lane_values(
    P: np.ndarray,
    L: np.ndarray,
    pk: np.ndarray,
    pm: np.ndarray,
    pj: np.ndarray,
    plan: _LanePlan,
    band: int,
) -> np.ndarray:
    """Compiled DTW of the pairs ``(P[pk[p], pm[p]], L[pj[p]])`` for every subset: ``[pairs, subsets]``.

    ``P`` ``[N, M, T, D]``, ``L`` ``[K, U, D]``. Euclidean values are squared path costs (the caller takes
    the square root after its minimum); abs values are per-dimension DTWs summed per subset. When every
    pair has the same ``pj``, y is built once and broadcast in the kernel; otherwise each lane has its own.
    """
    n = len(pk)
    T, U = P.shape[2], L.shape[1]
    shared = bool(np.all(pj == pj[0]))
    values = np.empty((n, plan.n_subsets))
    runs = (
        [(g.cols, g) for g in plan.groups] if plan.mode == "euclidean" else [(plan.abs_cols, None)]
    )  # one pass over the data per column set
    for cols, group in runs:
        Dk = len(cols)
        S = len(group.subsets) if group is not None else 1
        xg = np.empty((T, Dk, LANES), np.float32)
        R = np.empty((S, (U + _SPAN + 1) * LANES))
        C = np.empty((S, _SPAN * LANES), np.float32)
        res = np.empty((S, LANES)) if group is not None else np.empty((Dk, LANES))
        if shared:
            yj = np.asarray(L[pj[0]], np.float64)[:, cols]
            centre_j = yj.mean(axis=0)
            y = np.zeros((U + _SPAN, Dk), np.float32)
            y[:U] = yj - centre_j
            _check_finite(y, "real")
        for s0 in range(0, n, LANES):
            sl = slice(s0, min(n, s0 + LANES))
            if shared:
                centre = np.broadcast_to(centre_j, (sl.stop - s0, Dk))
            else:
                ys = np.asarray(L[pj[sl]], np.float64)[:, :, cols]  # [lanes, U, Dk]
                centre = ys.mean(axis=1)
                y = np.zeros((U + _SPAN, Dk, LANES), np.float32)
                y[:U, :, : len(ys)] = (ys - centre[:, None]).transpose(1, 2, 0)
                y[:U, :, len(ys) :] = y[:U, :, :1]
                _check_finite(y, "real")
            if not _gather_lanes(P, pk[sl], pm[sl], cols, np.ascontiguousarray(centre), xg):
                raise ValueError("DTW inputs must be finite: the generated reactions hold NaN or inf")
            live = sl.stop - s0
            if group is not None:
                _sq_kernel(xg, y, group.bounds, group.weights, band, R, C, res)
                values[sl][:, group.subsets] = res[:, :live].T
            else:
                _abs_kernel(xg, y, band, R, C, res)
                for s, pos in enumerate(plan.abs_positions):
                    values[sl, s] = res[pos, :live].sum(axis=0)
    return values


def _check_finite(a: np.ndarray, what: str) -> None:
    # NaN would not reliably propagate through the kernels' min (x86 min returns its second operand on NaN).
    if not np.isfinite(a).all():
        raise ValueError(f"DTW inputs must be finite: the {what} reactions hold NaN or inf")


def _pairwise_lanes(x: np.ndarray, y: np.ndarray, mode: str, band: int | None) -> np.ndarray:
    """Compiled DTW of ``x[b]`` against ``y[b]``: ``[B]`` squared path costs or ``[B, D]`` per-dim DTWs."""
    B, T, D = x.shape
    band_ = _check_band(band, T, y.shape[1])
    # abs: one "subset" per dimension, so the per-dimension DTWs come back unsummed
    per_subset = [np.arange(D)] if mode == "euclidean" else [np.array([d]) for d in range(D)]
    plan = _lane_plan(per_subset, mode)
    idx = np.arange(B)
    return _lane_values(x[:, None], y, idx, np.zeros(B, np.int64), idx, plan, band_)


def _check_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 3 or y.ndim != 3 or len(x) != len(y) or x.shape[2] != y.shape[2]:
        raise ValueError(f"expected x [B, T, D] and y [B, U, D], got {x.shape} and {y.shape}")
    return x, y


def dtw_euclidean(
    x: np.ndarray,
    y: np.ndarray,
    band: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: str = "auto",
) -> np.ndarray:
    """Multivariate DTW as ``tslearn.metrics.dtw``: ``sqrt`` of the best path's summed ``||x_t - y_u||^2``.

    ``x`` ``[B, T, D]``, ``y`` ``[B, U, D]`` -> ``[B]``. ``band``: Sakoe-Chiba radius (None = exact).
    ``backend``: ``"numba"`` (compiled, float32 local costs and float64 sums), ``"numpy"`` (float64
    reference; ``max_bytes`` bounds its cost volumes) or ``"auto"`` (numba when installed).
    """
    x, y = _check_pairs(x, y)
    if not _use_numba(backend):
        return _dtw_euclidean_numpy(x, y, band, max_bytes)
    return np.sqrt(_pairwise_lanes(x, y, "euclidean", band)[:, 0])


def dtw_abs(
    x: np.ndarray,
    y: np.ndarray,
    band: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: str = "auto",
) -> np.ndarray:
    """Per-dimension DTW with ``|x - y|`` local cost: one alignment per dimension.

    ``x`` ``[B, T, D]``, ``y`` ``[B, U, D]`` -> ``[B, D]`` (sum over dimensions for a subset's distance).
    ``band``, ``max_bytes``, ``backend``: as for :func:`dtw_euclidean`.
    """
    x, y = _check_pairs(x, y)
    if not _use_numba(backend):
        return _dtw_abs_numpy(x, y, band, max_bytes)
    return _pairwise_lanes(x, y, "abs", band)


def _frdist_tasks(lists: Sequence[np.ndarray], ks: Sequence[int], M: int) -> list[tuple[np.ndarray, ...]]:
    """FRDist's (clip, sample, neighbour) pairs as kernel tasks ``(pk, pm, pj)``, largest first.

    Pairs are grouped by neighbour so that each group shares its y (2x faster per lane than per-lane y).
    A neighbour's last partial group of fewer than ``LANES / 2`` pairs joins a pool of such remainders,
    aligned with per-lane y, rather than leaving more than half of its lanes idle.
    """
    users: dict[int, list[int]] = {}
    for k in ks:
        for j in lists[k]:
            users.setdefault(int(j), []).append(k)
    tasks = []
    rest_k, rest_m, rest_j = [], [], []
    for j, clips in users.items():
        pk = np.repeat(np.asarray(clips, np.int64), M)
        pm = np.tile(np.arange(M, dtype=np.int64), len(clips))
        r = len(pk) % LANES
        keep = len(pk) - r if r < LANES // 2 else len(pk)
        if keep:
            tasks.append((pk[:keep], pm[:keep], np.full(keep, j, np.int64)))
        rest_k.append(pk[keep:])
        rest_m.append(pm[keep:])
        rest_j.append(np.full(len(pk) - keep, j, np.int64))
    rk, rm, rj = (np.concatenate(a) if a else np.zeros(0, np.int64) for a in (rest_k, rest_m, rest_j))
    for s in range(0, len(rk), LANES):
        tasks.append((rk[s : s + LANES], rm[s : s + LANES], rj[s : s + LANES]))
    return sorted(tasks, key=lambda t: -len(t[0]))


def _frdist_numba(
    P: np.ndarray,
    L: np.ndarray,
    lists: Sequence[np.ndarray],
    ks: Sequence[int],
    cols: Sequence[np.ndarray],
    mode: str,
    band: int | None,
    workers: int,
) -> np.ndarray:
    """Per-clip sums over samples of the min over ``A(k)``: ``[len(ks), subsets]``, compiled, in threads."""
    N, M, T, _ = P.shape
    band_ = _check_band(band, T, L.shape[1])
    plan = _lane_plan(cols, mode)
    tasks = _frdist_tasks(lists, ks, M)
    best = np.full((N * M, len(cols)), np.inf)

    def run(task: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        pk, pm, pj = task
        return pk * M + pm, _lane_values(P, L, pk, pm, pj, plan, band_)

    if workers == 1:
        for pairs, values in map(run, tasks):
            np.minimum.at(best, pairs, values)
    else:
        # The kernels release the GIL; threads share P and L without copies.
        with ThreadPoolExecutor(workers) as pool:
            for pairs, values in pool.map(run, tasks):
                np.minimum.at(best, pairs, values)
    per_pair = np.sqrt(np.maximum(best, 0.0)) if mode == "euclidean" else best
    return per_pair.reshape(N, M, -1)[list(ks)].sum(axis=1)


def frdist(
    P: np.ndarray,
    L: np.ndarray,
    neighbours: np.ndarray,
    subsets: SubsetSpec = tuple(SUBSETS),
    dtw: str = "euclidean",
    band: int | None = None,
    workers: int = 1,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backend: str = "auto",
) -> dict[str, float]:
    """FRDist per subset: mean over clips of ``sum_i min_{j in A(k)} DTW(P[k, i], L[j])``.

    ``P`` ``[N, M, T, D]``, ``L`` ``[K, U, D]``, ``neighbours`` bool ``[N, K]``. ``dtw``: ``"euclidean"``
    (tslearn's multivariate DTW on the subset's columns, the public code's choice) or ``"abs"`` (per
    dimension, ``|x - y|`` cost, summed over the subset). ``band``: Sakoe-Chiba radius (None = exact).
    ``backend``: ``"numba"`` (compiled kernels, :data:`LANES` alignments per call, ``workers`` threads,
    memory O(workers x T x D x LANES)), ``"numpy"`` (the float64 reference: ``workers`` processes, each
    batch's cost volume bounded by ``max_bytes``) or ``"auto"`` (numba when installed, else numpy with a
    warning). Clips with an empty ``A(k)`` are left out; NaN when none has a neighbour.
    """
    if dtw not in ("euclidean", "abs"):
        raise ValueError(f"dtw must be 'euclidean' or 'abs', got {dtw!r}")
    P = _check_reactions(P)
    L = np.asarray(L)
    cols = resolve_subsets(subsets, P.shape[-1])
    lists = _neighbour_lists(neighbours, P.shape[0], len(L))
    ks = [k for k, js in enumerate(lists) if js.size]
    if not ks:
        return {name: math.nan for name in cols}
    col_list = list(cols.values())
    workers = max(1, min(workers, len(ks)))
    if _use_numba(backend):
        per_clip = _frdist_numba(P, L, lists, ks, col_list, dtw, band, workers)
        return {name: float(per_clip[:, s].mean()) for s, name in enumerate(cols)}
    if workers == 1:
        mins = _min_dtw(P, L, lists, ks, col_list, dtw, band, max_bytes)
    else:
        # Several chunks per worker balance clips with different |A(k)|.
        chunks = [ks[i :: workers * 4] for i in range(workers * 4) if ks[i :: workers * 4]]
        mins = {}
        with ProcessPoolExecutor(workers, _pool_context(), _pool_init, (L, P, lists)) as pool:
            futures = [pool.submit(_pool_task, c, col_list, dtw, band, max_bytes) for c in chunks]
            for f in futures:
                mins.update(f.result())
    per_clip = np.stack([mins[k].sum(axis=0) for k in ks])  # [clips, subsets]
    return {name: float(per_clip[:, s].mean()) for s, name in enumerate(cols)}


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


def _clip_chunks(n: int, per_item_bytes: int, budget: int = DEFAULT_MAX_BYTES) -> Iterator[slice]:
    step = max(1, budget // max(1, per_item_bytes))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


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
    if numba is None:
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


# ----------------------------------------------------------------------------------------------------------
# Synchrony


def _lag_windows(T: int, max_lag: int) -> tuple[np.ndarray, ...]:
    lags = np.arange(-max_lag, max_lag + 1)
    xa, xb = np.maximum(lags, 0), T + np.minimum(lags, 0)  # x[t + lag] overlaps ...
    ya, yb = np.maximum(-lags, 0), T - np.maximum(lags, 0)  # ... y[t]
    return lags, xa, xb, ya, yb


def _window_moments(z: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``z`` and ``z^2`` over time windows ``[a, b)``: ``[..., D, T]`` -> two ``[..., D, lags]``.

    Every lag window drops at most ``h = max_lag`` frames at one end (``a == 0`` or ``b == T``), so each
    sum is the total minus a head sum of ``a`` frames minus a tail sum of ``T - b`` frames: cumulative
    sums over the ``h`` frames at each end only, not over all ``T`` (3x faster FRSyn at ``T = 750``).
    """
    T = z.shape[-1]
    h = int(max(a.max(), T - b.min(), 0))
    out = []
    for power in (1, 2):
        head = z[..., :h] if power == 1 else np.square(z[..., :h])
        tail = z[..., T - h :][..., ::-1] if power == 1 else np.square(z[..., T - h :][..., ::-1])
        zero = np.zeros(z.shape[:-1] + (1,))
        head = np.concatenate([zero, np.cumsum(head, axis=-1)], axis=-1)  # head[j] = sum of z[:j]
        tail = np.concatenate([zero, np.cumsum(tail, axis=-1)], axis=-1)  # tail[j] = sum of z[T - j:]
        total = z.sum(axis=-1) if power == 1 else np.einsum("...t,...t->...", z, z)
        out.append(total[..., None] - head[..., a] - tail[..., T - b])
    return out[0], out[1]


def _tlcc_batch(x: np.ndarray, y: np.ndarray, max_lag: int, const_tol: float) -> np.ndarray:
    """Pearson correlation per dim and lag: ``x [c, M, D, T]``, ``y [c, D, T]`` -> ``[c, M, D, lags]``.

    NaN where either overlapping part is constant. Cross sums come from one FFT per series (zero padded
    to ``T + max_lag``, so no circular wrap reaches the lags used); window sums from cumulative sums.
    """
    T = x.shape[-1]
    if max_lag < 0 or T < 2:
        raise ValueError(f"need max_lag >= 0 and at least 2 frames, got max_lag {max_lag} and {T} frames")
    max_lag = min(max_lag, T - 2)  # a correlation needs two overlapping frames
    lags, xa, xb, ya, yb = _lag_windows(T, max_lag)
    # Centring changes no correlation and keeps the moment differences below well conditioned.
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    nfft = scipy.fft.next_fast_len(T + max_lag, real=True)
    fx = scipy.fft.rfft(x, nfft, axis=-1)
    fy = scipy.fft.rfft(y, nfft, axis=-1)
    circ = scipy.fft.irfft(fx * np.conj(fy)[:, None], nfft, axis=-1)  # circ[l] = sum_t x[t + l] y[t]
    sxy = circ[..., lags % nfft]
    sx, sxx = _window_moments(x, xa, xb)
    sy, syy = _window_moments(y, ya, yb)
    n = (T - np.abs(lags)).astype(np.float64)
    vx = sxx / n - (sx / n) ** 2
    vy = (syy / n - (sy / n) ** 2)[:, None]
    valid = (vx > const_tol**2) & (vy > const_tol**2)
    cov = sxy / n - (sx / n) * (sy / n)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    return np.where(valid, r, np.nan)


def tlcc(
    x: np.ndarray, y: np.ndarray, max_lag: int = SYN_MAX_LAG, const_tol: float = CONST_TOL
) -> np.ndarray:
    """Time-lagged Pearson correlation per dimension: ``x``, ``y`` ``[T, D]`` -> ``[D, 2 * max_lag + 1]``.

    Column ``max_lag + l`` correlates ``x[t + l]`` with ``y[t]`` over the overlap; NaN where either
    overlapping part is constant. ``max_lag`` is capped at ``T - 2``.
    """
    x = np.asarray(x, np.float64).T[None, None]
    y = np.asarray(y, np.float64).T[None]
    return _tlcc_batch(x, y, max_lag, const_tol)[0, 0]


def _frsyn_counts(
    P: np.ndarray, S: np.ndarray, cols: Mapping[str, np.ndarray], max_lag: int, const_tol: float
) -> dict[str, tuple[float, int, int, int]]:
    N, M, T, D = P.shape
    offsets = {name: [] for name in cols}
    excluded_channels = {name: 0 for name in cols}
    excluded_reactions = {name: 0 for name in cols}
    max_lag = min(max_lag, T - 2)  # as _tlcc_batch does
    lags = np.arange(-max_lag, max_lag + 1)
    for sl in _clip_chunks(N, M * D * (10 * T + 12 * (2 * max_lag + 1)) * 8):
        x = np.asarray(P[sl], np.float64).transpose(0, 1, 3, 2)
        y = np.asarray(S[sl], np.float64).transpose(0, 2, 1)
        r = _tlcc_batch(x, y, max_lag, const_tol)  # [c, M, D, lags]
        const = (x.std(axis=-1) <= const_tol) | (y.std(axis=-1) <= const_tol)[:, None]  # [c, M, D]
        for name, idx in cols.items():
            rs = r[:, :, idx]
            ok = ~np.isnan(rs)
            cnt = ok.sum(axis=2)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(ok, rs, 0.0).sum(axis=2) / cnt  # [c, M, lags], NaN where no valid dim
            defined = ~np.isnan(mean).all(axis=-1)
            peak = np.argmax(np.where(np.isnan(mean), -np.inf, mean), axis=-1)
            offsets[name].append(np.abs(lags[peak])[defined])
            excluded_channels[name] += int(const[:, :, idx].sum())
            excluded_reactions[name] += int((~defined).sum())
    out = {}
    for name in cols:
        off = np.concatenate(offsets[name])
        out[name] = (
            float(off.mean()) if off.size else math.nan,
            int(off.size),
            excluded_channels[name],
            excluded_reactions[name],
        )
    return out


def frsyn(
    P: np.ndarray,
    S: np.ndarray,
    subsets: SubsetSpec = tuple(SUBSETS),
    max_lag: int = SYN_MAX_LAG,
    const_tol: float = CONST_TOL,
) -> dict[str, float]:
    """FRSyn per subset: mean over all clips and samples of ``|lag|`` at the peak of the TLCC.

    ``P`` ``[N, M, T, D]``, ``S`` ``[N, T, D]``. Constant channels are excluded lag by lag; reactions with
    no valid channel at any lag are left out (:func:`compute_all` reports both counts). Clips shorter than
    ``max_lag + 2`` frames use lags up to ``T - 2`` (two overlapping frames at least).
    """
    P = _check_reactions(P)
    cols = resolve_subsets(subsets, P.shape[-1])
    return {name: v[0] for name, v in _frsyn_counts(P, np.asarray(S), cols, max_lag, const_tol).items()}


# ----------------------------------------------------------------------------------------------------------
# Realism


def _stats_features(windows: np.ndarray) -> np.ndarray:
    return np.concatenate([windows.mean(axis=1), windows.std(axis=1)], axis=-1)


def _dynamics_features(windows: np.ndarray) -> np.ndarray:
    vel = np.diff(windows, axis=1)
    acc = np.diff(vel, axis=1)
    return np.concatenate([np.abs(vel).mean(axis=1), np.abs(acc).mean(axis=1)], axis=-1)


FeatureFn = Callable[[np.ndarray], np.ndarray]
FEATURE_EXTRACTORS: dict[str, FeatureFn] = {"stats": _stats_features, "dynamics": _dynamics_features}
"""Named window feature extractors: ``windows [n, window, D] -> features [n, F]``."""

if numba is not None:

    @numba.njit(nogil=True, cache=True)
    def _window_kernel(x, cols, starts, window, dynamics, out):
        """The named extractors compiled: row ``s * len(starts) + w`` of ``out`` = window ``w`` of ``x[s]``.

        ``x`` ``[S, T, D_all]`` (read in place, columns ``cols``), ``out`` float64 ``[S * len(starts), 2 D]``:
        ``stats`` (mean, then std with ddof=0, two passes) or ``dynamics`` (mean absolute velocity, then
        mean absolute acceleration). The same formulas as :func:`_stats_features` and
        :func:`_dynamics_features` without their float64 window copies and temporaries (measured 4x faster).
        """
        n_win = starts.shape[0]
        D = cols.shape[0]
        buf = np.empty((window, D))
        for s in range(x.shape[0]):
            for w in range(n_win):
                row = s * n_win + w
                for t in range(window):
                    for c in range(D):
                        buf[t, c] = x[s, starts[w] + t, cols[c]]
                for c in range(D):
                    if dynamics:
                        prev = buf[1, c] - buf[0, c]
                        sv = abs(prev)
                        sa = 0.0
                        for t in range(2, window):
                            v = buf[t, c] - buf[t - 1, c]
                            sv += abs(v)
                            sa += abs(v - prev)
                            prev = v
                        out[row, c] = sv / (window - 1)
                        out[row, D + c] = sa / (window - 2)
                    else:
                        total = 0.0
                        for t in range(window):
                            total += buf[t, c]
                        mean = total / window
                        ss = 0.0
                        for t in range(window):
                            ss += (buf[t, c] - mean) * (buf[t, c] - mean)
                        out[row, c] = mean
                        out[row, D + c] = math.sqrt(ss / window)

    @numba.njit(nogil=True, cache=True)
    def _gather_windows(x, cols, starts, window, out):
        """``out[s * len(starts) + w, t, c] = x[s, starts[w] + t, cols[c]]`` in float64, in one pass."""
        n_win = starts.shape[0]
        for s in range(x.shape[0]):
            for w in range(n_win):
                row = s * n_win + w
                for t in range(window):
                    for c in range(cols.shape[0]):
                        out[row, t, c] = x[s, starts[w] + t, cols[c]]


def window_features(
    x: np.ndarray,
    kind: str | FeatureFn = "stats",
    window: int = 50,
    hop: int | None = None,
    columns: Columns | None = None,
) -> np.ndarray:
    """Feature vectors of windows of frames: ``x`` ``[..., T, D]`` -> ``[n_windows, F]``.

    Windows of ``window`` frames every ``hop`` frames (default: non-overlapping); a trailing partial window
    is dropped. ``kind``: a key of :data:`FEATURE_EXTRACTORS` (``stats``: mean and std per dim, ``F = 2D``;
    ``dynamics``: mean absolute velocity and acceleration per dim, ``F = 2D``) or a callable
    ``windows [n, window, D] -> [n, F]`` (e.g. a learned temporal encoder). ``columns`` selects dims first.
    """
    fn = FEATURE_EXTRACTORS[kind] if isinstance(kind, str) else kind
    x = np.asarray(x)
    T = x.shape[-2]
    # Columns are selected chunk by chunk: x[..., columns] up front copies all of x (2.8 GB for the
    # REACT test set's generated reactions), once per concurrent FD in compute_all.
    cols = np.arange(x.shape[-1]) if columns is None else np.arange(x.shape[-1])[columns]
    D = len(cols)
    hop = window if hop is None else hop
    if window > T or (kind == "dynamics" and window < 3):
        raise ValueError(f"window {window} does not fit clips of {T} frames (dynamics needs >= 3)")
    starts = np.arange(0, T - window + 1, hop)
    seqs = x.reshape(-1, T, x.shape[-1])
    if isinstance(kind, str) and numba is not None and x.dtype in (np.float32, np.float64):
        out = np.empty((len(seqs) * len(starts), 2 * D))
        _window_kernel(seqs, cols, starts, window, kind == "dynamics", out)
        return out
    feats = []
    compiled = numba is not None and x.dtype in (np.float32, np.float64)
    for sl in _clip_chunks(len(seqs), len(starts) * window * D * 8 * 4):  # float64 windows + temporaries
        if compiled:  # one copy, where the numpy path below makes three (columns, float64, layout)
            wins = np.empty(((sl.stop - sl.start) * len(starts), window, D))
            _gather_windows(seqs[sl], cols, starts, window, wins)
        else:
            chunk = seqs[sl] if columns is None else seqs[sl][..., cols]
            view = np.lib.stride_tricks.sliding_window_view(chunk, window, axis=1)[:, starts]
            wins = np.asarray(view, np.float64).transpose(0, 1, 3, 2).reshape(-1, window, D)  # [n, window, D]
        feats.append(np.asarray(fn(wins), np.float64))
    return np.concatenate(feats, axis=0)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 0.0) -> float:
    """Frechet distance between Gaussian fits of two feature sets ``[n_a, F]`` and ``[n_b, F]``.

    ``||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` with sample covariances (ddof=1). The trace
    of the matrix square root is computed as ``tr((A C_b A)^(1/2))`` with ``A = C_a^(1/2)``: ``C_a C_b`` and
    ``A C_b A`` share their eigenvalues, and the latter is symmetric positive semi-definite, so ``eigh``
    gives it exactly even for singular covariances, where ``scipy.linalg.sqrtm`` of the non-symmetric
    product can return complex or inaccurate roots. ``eps`` (optional) is added to both diagonals.
    """
    a = np.asarray(features_a, np.float64)
    b = np.asarray(features_b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected two [n, F] feature sets with the same F, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("each feature set needs at least two vectors for a covariance")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    # Small covariances and eigensolvers make many small BLAS calls; with threaded BLAS on a busy machine
    # each waits for sleeping threads: measured 50x slower (0.5 s instead of 0.01 s for F = 116).
    with _single_threaded_blas():
        ca = np.atleast_2d(np.cov(a, rowvar=False)) + eps * np.eye(a.shape[1])
        cb = np.atleast_2d(np.cov(b, rowvar=False)) + eps * np.eye(a.shape[1])
        w, v = np.linalg.eigh(ca)
        root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
        inner = root_a @ cb @ root_a
        tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(max(0.0, diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * tr_root))


def real_floor(
    real: np.ndarray,
    kind: str | FeatureFn = "stats",
    window: int = 50,
    seed: int = 0,
    columns: Columns | None = None,
) -> float:
    """Frechet distance between two random halves (by clip) of the real reactions ``[K, T, D]``.

    The floor a perfect generator would reach with half as many reactions per side; windows of one clip
    stay in one half, since they are not independent.
    """
    real = np.asarray(real)
    if len(real) < 4:
        raise ValueError(f"real_floor needs at least 4 real reactions, got {len(real)}")
    order = np.random.default_rng(seed).permutation(len(real))
    half = len(real) // 2
    fa = window_features(real[order[:half]], kind, window, columns=columns)
    fb = window_features(real[order[half:]], kind, window, columns=columns)
    return frechet_distance(fa, fb)


def _floor_from_features(real_features: np.ndarray, n_clips: int, seed: int) -> float:
    """:func:`real_floor` from the features of all real clips (rows clip by clip, equally many each).

    The same halves, rows and order as :func:`real_floor` draws, without extracting the features again.
    """
    per_clip = real_features.reshape(n_clips, -1, real_features.shape[-1])
    order = np.random.default_rng(seed).permutation(n_clips)
    half = n_clips // 2
    fa = per_clip[order[:half]].reshape(-1, real_features.shape[-1])
    fb = per_clip[order[half:]].reshape(-1, real_features.shape[-1])
    return frechet_distance(fa, fb)


# ----------------------------------------------------------------------------------------------------------
# Everything


def compute_all(
    P: np.ndarray,
    L: np.ndarray,
    S: np.ndarray,
    neighbours: np.ndarray,
    subsets: SubsetSpec = ("all", "expression", "pose"),
    *,
    dtw: str = "euclidean",
    band: int | None = None,
    workers: int = 1,
    backend: str = "auto",
    max_lag: int = SYN_MAX_LAG,
    feature_kinds: Mapping[str, str | FeatureFn | Mapping[str, FeatureFn]] | Sequence[str] = (
        "stats",
        "dynamics",
    ),
    window: int = 50,
    seed: int = 0,
    const_tol: float = CONST_TOL,
) -> dict[str, dict[str, float]]:
    """Every metric for every subset: ``{subset: {metric: value}}``.

    ``P`` ``[N, M, T, D]`` generated, ``L`` ``[K, T, D]`` all real listener reactions of the split, ``S``
    ``[N, T, D]`` speakers, ``neighbours`` bool ``[N, K]``. Metrics: ``FRCorr``, ``FRDist``, ``FRDiv``,
    ``FRVar``, ``FRDvs``, ``FRSyn``, ``Jitter`` (smoothness, not a REACT metric), and for each feature
    kind ``FD_<kind>`` (generated vs all real reactions) and ``FD_<kind>_real_floor``. Counts:
    ``clips_without_neighbours`` (left out of FRCorr and FRDist), ``constant_channels`` (clip, sample, dim
    channels of ``P`` constant over time), ``FRSyn_excluded_channels`` (constant over the whole clip in
    ``P`` or ``S``), ``FRSyn_excluded_reactions`` (no valid channel at any lag) and ``FRSyn_reactions``
    (scored). ``workers`` parallelises FRDist (threads with the compiled ``backend``, processes with
    numpy). ``feature_kinds``: names of :data:`FEATURE_EXTRACTORS`, or ``{label: kind}`` where a kind is a
    name, a callable, or a ``{subset: callable}`` mapping (one extractor per subset, e.g. the learned
    encoders of :mod:`reactdiff.realism`; subsets it lacks get no ``FD_<label>``).
    """
    P = _check_reactions(P)
    L, S = np.asarray(L), np.asarray(S)
    N, M, T, D = P.shape
    if S.shape != (N, T, D) or L.ndim != 3 or L.shape[2] != D:
        raise ValueError(f"shapes disagree: P {P.shape}, L {L.shape} (expected [K, T, {D}]), S {S.shape}")
    cols = resolve_subsets(subsets, D)
    kinds = dict(feature_kinds) if isinstance(feature_kinds, Mapping) else {k: k for k in feature_kinds}
    lists = _neighbour_lists(neighbours, N, len(L))
    no_neighbours = sum(1 for js in lists if js.size == 0)

    results: dict[str, dict[str, float]] = {name: {} for name in cols}
    Entry = tuple[str, str, float]  # (subset, metric, value)

    def per_subset(metric: str, values: Mapping[str, float]) -> list[Entry]:
        return [(name, metric, float(v)) for name, v in values.items()]

    def syn_entries() -> list[Entry]:
        syn = _frsyn_counts(P, S, cols, max_lag, const_tol)
        keys = ("FRSyn", "FRSyn_reactions", "FRSyn_excluded_channels", "FRSyn_excluded_reactions")
        return [(name, key, float(v[i])) for i, key in enumerate(keys) for name, v in syn.items()]

    def fd_entries(label: str, name: str, fn: str | FeatureFn) -> list[Entry]:
        idx = cols[name]
        gen = window_features(P, fn, window, columns=idx)
        real = window_features(L, fn, window, columns=idx)
        enough = len(gen) >= 2 and len(real) >= 2
        fd = frechet_distance(gen, real) if enough else math.nan
        floor = _floor_from_features(real, len(L), seed) if len(L) >= 4 else math.nan
        return [(name, f"FD_{label}", fd), (name, f"FD_{label}_real_floor", floor)]

    def diversity_entries() -> list[Entry]:
        # FRDiv, FRVar, FRDvs, Jitter and the constant channels in one pass over P (two for FRDvs).
        names = ["var", "constant"] + (["div"] if M >= 2 else []) + (["dvs"] if N >= 2 else [])
        names += ["jitter"] if T >= 3 else []
        totals = _diversity_totals(P, names, const_tol)
        out = per_subset(
            "FRDiv", _subset_means(totals["div"] / (N * T), cols) if M >= 2 else dict.fromkeys(cols, 0.0)
        )
        out += per_subset("FRVar", _subset_means(totals["var"] / (N * M), cols))
        dvs = _subset_means(totals["dvs"] / (M * T), cols) if N >= 2 else dict.fromkeys(cols, math.nan)
        out += per_subset("FRDvs", dvs)
        if T >= 3:
            out += per_subset("Jitter", _subset_means(totals["jitter"] / (N * M * (T - 2)), cols))
        constant = totals["constant"]
        return out + per_subset(
            "constant_channels", {name: int(constant[idx].sum()) for name, idx in cols.items()}
        )

    dist = frdist(P, L, neighbours, cols, dtw=dtw, band=band, workers=workers, backend=backend)
    tasks: list[Callable[[], list[Entry]]] = [
        lambda: per_subset("FRCorr", frcorr(P, L, neighbours, cols, const_tol)),
        lambda: per_subset("FRDist", dist),
        diversity_entries,
        syn_entries,
    ]
    for label, kind in kinds.items():
        for name in cols:
            fn = kind.get(name) if isinstance(kind, Mapping) else kind
            if fn is not None:  # a per-subset extractor mapping without this subset: not scored
                tasks.append(lambda label=label, name=name, fn=fn: fd_entries(label, name, fn))
    # The metrics besides FRDist are single-threaded compiled kernels or numpy, both of which release the
    # GIL: ``workers`` threads run them side by side (each bounds its own working memory).
    # Results are collected in task order, so the output does not depend on which finishes first.
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            entries = list(pool.map(lambda task: task(), tasks))
    else:
        entries = [task() for task in tasks]
    for group in entries:
        for name, metric, value in group:
            results[name][metric] = value
    for name in cols:
        results[name]["constant_channels"] = results[name].pop("constant_channels")  # last, as before
        results[name]["clips_without_neighbours"] = float(no_neighbours)
    return results
