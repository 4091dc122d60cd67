"""CCC and FRCorr: how well a generated reaction agrees with the best of its appropriate real ones."""

from __future__ import annotations

import math

import numpy as np

from reactdiff.metrics import _compiled
from reactdiff.metrics._common import (
    CONST_TOL,
    SUBSETS,
    SubsetSpec,
    _check_reactions,
    _neighbour_lists,
    resolve_subsets,
)
from reactdiff.metrics._compiled import numba

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
    if _compiled.available() and P.dtype in (np.float32, np.float64) and L.dtype in (np.float32, np.float64):
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
