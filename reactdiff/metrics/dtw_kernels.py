"""DTW compiled with numba: LANES alignments at once, one per SIMD lane, and the public DTW functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from reactdiff.metrics._common import DEFAULT_MAX_BYTES
from reactdiff.metrics._compiled import (
    _cgutils,
    _intrinsic,
    _make_array,
    _nbtypes,
    _overload,
    _populate_array,
    numba,
    use_numba,
)
from reactdiff.metrics.dtw_reference import _dtw_abs_numpy, _dtw_euclidean_numpy

# ----------------------------------------------------------------------------------------------------------
# DTW, compiled (backend="numba"): LANES alignments at once, one per SIMD lane
#
# One kernel call aligns LANES (x, y) pairs row by row with a single float64 row buffer per subset. Every
# step of the recurrence is the same for all lanes, so lanes are the innermost, contiguous axis of every
# array and each step is a handful of vector instructions. Pairs that share their y (one real reaction
# against many generated ones, which is how FRDist's pairs come) broadcast y from memory; otherwise y has a
# lane axis too. Local costs are float32 (inputs are first centred on the mean of y in float64, so no
# precision is lost to large offsets); path sums are float64.
#
# Speed, in CPU time per (pair, cell) at T = U = 750, 58 dims, three subsets, with shared y:
# - AMD EPYC (Zen 3, AVX2): 2.2 ns (5.3 cycles at 2.45 GHz; the 58 subtractions and 58 FMAs per pair and
#   cell alone need 3.6), about 5 ns without shared y.
# - Intel Xeon with AVX-512 (Sapphire Rapids class: AVX512-FP16 and AMX, 2 vCPUs under KVM): 2.0 ns with
#   256-bit vectors as before, 1.6 ns with the 512-bit path below (1.25x, old and new kernels timed in
#   turn in one process on a machine shared with other jobs; FRDist end to end at 96 clips and 20
#   neighbours per clip, 2 workers: 2.4 -> 1.9 ns). Without shared y, 7.7 ns either way: the per-lane y of
#   a 750-frame alignment (2.8 MB) overflows this core's 2 MB L2 and is read from L3 on every row.
#
# The local costs are bound by floating-point issue. Zen 3 issues two 256-bit FMAs and two 256-bit adds per
# cycle; this Xeon about three 256-bit or two 512-bit operations (a loop of independent vsubps and vfmadd231ps
# timed against an imul-latency clock), so 512-bit vectors process 1.3x the lanes. LLVM's Intel tunings prefer
# 256-bit vectors even where AVX-512 exists, so numba, which compiles for the host CPU, emits only ymm
# registers there; _prefer_wide_vectors lifts that for the squared-Euclidean kernel. One 512-bit register then
# holds all LANES, so a block of four columns would leave four FMA accumulation chains, each waiting on its
# own latency: with 512-bit vectors _UBLOCK is 8 (eight chains, 1.08x over four). AVX2 has 16 vector
# registers, which eight columns of two 256-bit halves would overflow, so there it stays 4 and the code is the
# same as before. The choice follows the CPU features numba compiles for (_wide_vectors), which also key
# numba's cache. The abs kernel keeps 256-bit vectors: its time is in the recurrence, and 512-bit ones
# measured 7-10% slower there. Not measured: Skylake-SP and other first-generation AVX-512 Xeons, whose
# 512-bit clock penalty is why LLVM prefers 256 bits on Intel.
#
# Codegen notes, all measured: the per-lane accumulators and the diagonal / left carries live on the stack
# (_stack_array), because LLVM keeps heap arrays in memory (it cannot rule out aliasing), 2x slower; a loop
# over a block's columns with indexed accumulators stays in memory too, 8x slower, hence the columns written
# out in _sq_cols4 / _sq_cols8; flat indices are cast to uint64 so that numba emits no negative-index
# wraparound, which otherwise blocks vectorisation of the recurrence; fastmath is limited to "contract"
# (fused multiply-add) since the row buffers use inf sentinels that the no-infs flag of full fastmath would
# let LLVM assume away.


def _wide_vectors() -> bool:
    """Whether numba compiles for 512-bit vectors: AVX-512F among the CPU features it targets.

    Those are ``NUMBA_CPU_FEATURES`` or else the host's (as numba reads them), the string that also keys
    numba's cache, so code cached under one choice is never loaded where the other holds.
    """
    if numba is None:
        return False
    features = getattr(numba.config, "CPU_FEATURES", None)
    if features is None:
        from numba.core.codegen import get_host_cpu_features

        features = get_host_cpu_features()
    flags = set(features.split(","))
    return "+avx512f" in flags and "-evex512" not in flags


_WIDE = _wide_vectors()
LANES = 16  # alignments per kernel call: two AVX2 vectors of float32, one AVX-512 vector
_UBLOCK = 8 if _WIDE else 4  # columns whose costs accumulate together in registers (see above)
_SPAN = 8  # columns per dynamic-programming pass over the buffered costs
_MAX_SUBSETS = 3  # subsets per euclidean kernel call (each is the sum of at most two column atoms)
_CARRY = _MAX_SUBSETS * LANES  # a literal for _stack_array: the per-subset diagonal / left carries


def _lane(row, d, l):  # pragma: no cover - compiled code uses the overload below
    """``row[d]`` for a shared ``y`` row ``[Dk]``, ``row[d, l]`` for a per-lane row ``[Dk, LANES]``."""
    return row[d] if row.ndim == 1 else row[d, l]


if numba is not None:
    _u64 = numba.uint64
    _JIT: dict[str, Any] = {"nogil": True, "cache": True, "fastmath": {"contract"}}

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

    @_intrinsic
    def _prefer_wide_vectors(typingctx):
        """Lets LLVM vectorise the calling function with 512-bit registers where the target has them.

        LLVM's Intel tunings prefer 256-bit vectors even with AVX-512 (for the clock penalty of 512-bit code
        on the first AVX-512 Xeons); for the local costs the wider ones pay (see above). Without AVX-512 the
        attribute is not set, and would change nothing.
        """

        def codegen(context, builder, signature, args):
            attributes = builder.function.attributes
            if _WIDE and isinstance(attributes, set):
                # llvmlite's FunctionAttributes only admits LLVM's keyword attributes, not string ones
                set.add(attributes, '"prefer-vector-width"="512"')
            return context.get_dummy_value()

        return _nbtypes.none(), codegen

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

    @numba.njit(inline="always")
    def _sq_cols4(xi, y, d0, d1, u0, a0, a1, a2, a3):
        """``a<c>[l] += sum((xi[d, l] - y[u0 + c, d(, l)]) ** 2 for d0 <= d < d1)`` for four columns."""
        y0 = y[_u64(u0)]
        y1 = y[_u64(u0 + 1)]
        y2 = y[_u64(u0 + 2)]
        y3 = y[_u64(u0 + 3)]
        for d in range(d0, d1):
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

    @numba.njit(inline="always")
    def _sq_cols8(xi, y, d0, d1, u0, a0, a1, a2, a3, a4, a5, a6, a7):
        """:func:`_sq_cols4` for eight columns: eight independent accumulation chains, one register each."""
        y0 = y[_u64(u0)]
        y1 = y[_u64(u0 + 1)]
        y2 = y[_u64(u0 + 2)]
        y3 = y[_u64(u0 + 3)]
        y4 = y[_u64(u0 + 4)]
        y5 = y[_u64(u0 + 5)]
        y6 = y[_u64(u0 + 6)]
        y7 = y[_u64(u0 + 7)]
        for d in range(d0, d1):
            du = _u64(d)
            xd = xi[du]
            for l in range(LANES):
                xv = xd[l]
                t0 = xv - _lane(y0, du, l)
                t1 = xv - _lane(y1, du, l)
                t2 = xv - _lane(y2, du, l)
                t3 = xv - _lane(y3, du, l)
                t4 = xv - _lane(y4, du, l)
                t5 = xv - _lane(y5, du, l)
                t6 = xv - _lane(y6, du, l)
                t7 = xv - _lane(y7, du, l)
                a0[l] += t0 * t0
                a1[l] += t1 * t1
                a2[l] += t2 * t2
                a3[l] += t3 * t3
                a4[l] += t4 * t4
                a5[l] += t5 * t5
                a6[l] += t6 * t6
                a7[l] += t7 * t7

    @numba.njit(inline="always")
    def _put_costs(Cs, o, wa, wb, a0, a1, a2, a3, b0, b1, b2, b3, u0, hi):
        """One subset's local costs ``wa * a<c> + wb * b<c>`` of columns ``u0 + c`` into ``Cs[o:]``, c < 4."""
        # Columns past the band or the end are unreachable: infinite cost.
        p0 = np.float32(0.0) if u0 <= hi else np.float32(np.inf)
        p1 = np.float32(0.0) if u0 + 1 <= hi else np.float32(np.inf)
        p2 = np.float32(0.0) if u0 + 2 <= hi else np.float32(np.inf)
        p3 = np.float32(0.0) if u0 + 3 <= hi else np.float32(np.inf)
        for l in range(LANES):
            Cs[_u64(o + l)] = wa * a0[l] + wb * b0[l] + p0
            Cs[_u64(o + LANES + l)] = wa * a1[l] + wb * b1[l] + p1
            Cs[_u64(o + 2 * LANES + l)] = wa * a2[l] + wb * b2[l] + p2
            Cs[_u64(o + 3 * LANES + l)] = wa * a3[l] + wb * b3[l] + p3

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
        _prefer_wide_vectors()
        a0 = _stack_array(LANES, np.float32)
        a1 = _stack_array(LANES, np.float32)
        a2 = _stack_array(LANES, np.float32)
        a3 = _stack_array(LANES, np.float32)
        a4 = _stack_array(LANES, np.float32)
        a5 = _stack_array(LANES, np.float32)
        a6 = _stack_array(LANES, np.float32)
        a7 = _stack_array(LANES, np.float32)
        b0 = _stack_array(LANES, np.float32)
        b1 = _stack_array(LANES, np.float32)
        b2 = _stack_array(LANES, np.float32)
        b3 = _stack_array(LANES, np.float32)
        b4 = _stack_array(LANES, np.float32)
        b5 = _stack_array(LANES, np.float32)
        b6 = _stack_array(LANES, np.float32)
        b7 = _stack_array(LANES, np.float32)
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
                    for l in range(LANES):
                        a0[l] = 0.0
                        a1[l] = 0.0
                        a2[l] = 0.0
                        a3[l] = 0.0
                        a4[l] = 0.0
                        a5[l] = 0.0
                        a6[l] = 0.0
                        a7[l] = 0.0
                        b0[l] = 0.0
                        b1[l] = 0.0
                        b2[l] = 0.0
                        b3[l] = 0.0
                        b4[l] = 0.0
                        b5[l] = 0.0
                        b6[l] = 0.0
                        b7[l] = 0.0
                    if _UBLOCK == 8:  # a constant: one branch is compiled
                        _sq_cols8(xi, y, bounds[0], bounds[1], u0, a0, a1, a2, a3, a4, a5, a6, a7)
                        _sq_cols8(xi, y, bounds[2], bounds[3], u0, b0, b1, b2, b3, b4, b5, b6, b7)
                    else:
                        _sq_cols4(xi, y, bounds[0], bounds[1], u0, a0, a1, a2, a3)
                        _sq_cols4(xi, y, bounds[2], bounds[3], u0, b0, b1, b2, b3)
                    for s in range(S):
                        wa = weights[s, 0]
                        wb = weights[s, 1]
                        Cs = C[s]
                        o = ub * LANES
                        _put_costs(Cs, o, wa, wb, a0, a1, a2, a3, b0, b1, b2, b3, u0, hi)
                        if _UBLOCK == 8:
                            _put_costs(Cs, o + 4 * LANES, wa, wb, a4, a5, a6, a7, b4, b5, b6, b7, u0 + 4, hi)
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
    if not use_numba(backend):
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
    if not use_numba(backend):
        return _dtw_abs_numpy(x, y, band, max_bytes)
    return _pairwise_lanes(x, y, "abs", band)
