"""FRDist: the DTW distance of each generated reaction to its nearest appropriate real one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np

from reactdiff.metrics._common import (
    DEFAULT_MAX_BYTES,
    SUBSETS,
    SubsetSpec,
    _check_reactions,
    _neighbour_lists,
    resolve_subsets,
)
from reactdiff.metrics._compiled import use_numba
from reactdiff.metrics.dtw_kernels import LANES, _check_band, _lane_plan, _lane_values
from reactdiff.metrics.dtw_reference import _min_dtw, _pool_context, _pool_init, _pool_task


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
    if use_numba(backend):
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
