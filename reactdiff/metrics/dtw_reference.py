"""DTW in numpy (the float64 reference the compiled kernels are tested against, and the path
without numba): anti-diagonal dynamic programming, vectorised over a batch of pairs."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from reactdiff.metrics._common import DEFAULT_MAX_BYTES, threadpool_limits

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
