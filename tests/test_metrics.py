import math

import numpy as np
import pytest
import scipy.linalg

from reactdiff import metrics
from reactdiff.layout import EXPRESSION, N_COEFFS, POSE
from reactdiff.metrics import (
    _compiled,
    ccc,
    compute_all,
    dtw_abs,
    dtw_euclidean,
    dtw_kernels,
    frcorr,
    frdist,
    frdiv,
    frdvs,
    frechet_distance,
    frsyn,
    frvar,
    jitter,
    real_floor,
    synchrony,
    tlcc,
    window_features,
)


def _smooth(rng, shape, width=9):
    """Random walk-free smooth noise: a moving average of white noise along the frame axis (-2)."""
    z = rng.normal(size=shape[:-2] + (shape[-2] + width, shape[-1]))
    c = np.cumsum(z, axis=-2)
    return (c[..., width:, :] - c[..., :-width, :]) / width


def _naive_dtw(x, y, cost, band=None):
    T, U = len(x), len(y)
    R = np.full((T + 1, U + 1), np.inf)
    R[0, 0] = 0.0
    for i in range(T):
        for j in range(U):
            if band is not None and abs(i - j) > band:
                continue
            R[i + 1, j + 1] = cost(x[i], y[j]) + min(R[i, j + 1], R[i + 1, j], R[i, j])
    return R[T, U]


# ---------------------------------------------------------------------------------------------- CCC


def test_ccc_matches_hand_computation():
    x = np.array([1.0, 2.0, 3.0, 4.0])[:, None]
    y = np.array([2.0, 4.0, 6.0, 8.0])[:, None]
    # means 2.5 and 5; population variances 1.25 and 5; covariance 2.5
    expected = 2 * 2.5 / (1.25 + 5.0 + (2.5 - 5.0) ** 2)
    assert expected == pytest.approx(0.4)
    assert ccc(x, y)[0] == pytest.approx(expected, abs=1e-12)
    assert ccc(y, x)[0] == pytest.approx(expected, abs=1e-12)


def test_ccc_identity_negation_and_per_dimension():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    x -= x.mean(axis=0)
    np.testing.assert_allclose(ccc(x, x), 1.0, atol=1e-12)
    np.testing.assert_allclose(ccc(x, -x), -1.0, atol=1e-12)
    # batch axes broadcast, one value per dimension
    assert ccc(np.stack([x, -x]), x).shape == (2, 3)


def test_ccc_constant_channel_convention():
    t = np.arange(10.0)
    both_equal = ccc(np.full((10, 1), 0.3), np.full((10, 1), 0.3))
    both_different = ccc(np.full((10, 1), 0.3), np.full((10, 1), 0.5))
    one_constant = ccc(np.full((10, 1), 0.3), t[:, None])
    assert both_equal[0] == 1.0  # perfect agreement, the only 0/0 case
    assert both_different[0] == pytest.approx(0.0, abs=1e-12)
    assert one_constant[0] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------- DTW


def test_dtw_hand_example():
    x = np.array([[0.0], [3.0]])[None]
    y = np.array([[1.0]])[None]
    # one frame of y: both frames of x align to it; squared costs 1 + 4, absolute costs 1 + 2
    assert dtw_euclidean(x, y)[0] == pytest.approx(math.sqrt(5.0))
    assert dtw_abs(x, y)[0, 0] == pytest.approx(3.0)
    # x = [0, 1, 2], y = [0, 2]: the best path (0,0) (1,0)|(1,1) (2,1) costs 0 + 1 + 0 (both costs)
    x = np.array([0.0, 1.0, 2.0])[None, :, None]
    y = np.array([0.0, 2.0])[None, :, None]
    assert dtw_euclidean(x, y)[0] == pytest.approx(1.0)
    assert dtw_abs(x, y)[0, 0] == pytest.approx(1.0)


def test_dtw_matches_naive_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 13, 3))
    y = rng.normal(size=(4, 9, 3)) + 0.5
    sq = lambda a, b: float(((a - b) ** 2).sum())  # noqa: E731
    want = [math.sqrt(_naive_dtw(a, b, sq)) for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(dtw_euclidean(x, y), want, rtol=1e-6)
    ab = lambda a, b: abs(a - b)  # noqa: E731
    want_abs = [[_naive_dtw(a[:, d], b[:, d], ab) for d in range(3)] for a, b in zip(x, y, strict=True)]
    np.testing.assert_allclose(dtw_abs(x, y), want_abs, rtol=1e-6)
    # the numpy reference too, and a tiny memory budget splits its batch without changing anything
    for max_bytes in (metrics.DEFAULT_MAX_BYTES, 1):
        got = dtw_euclidean(x, y, max_bytes=max_bytes, backend="numpy")
        np.testing.assert_allclose(got, want, rtol=1e-12)
        abs_numpy = dtw_abs(x, y, max_bytes=max_bytes, backend="numpy")
        np.testing.assert_allclose(abs_numpy, want_abs, rtol=1e-6)  # its cost volume is float32


def test_dtw_band_matches_naive_banded_reference():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 12, 2))
    y = rng.normal(size=(3, 12, 2))
    sq = lambda a, b: float(((a - b) ** 2).sum())  # noqa: E731
    for band in (0, 1, 3):
        want = [math.sqrt(_naive_dtw(a, b, sq, band)) for a, b in zip(x, y, strict=True)]
        np.testing.assert_allclose(dtw_euclidean(x, y, band=band), want, rtol=1e-6)
        np.testing.assert_allclose(dtw_euclidean(x, y, band=band, backend="numpy"), want, rtol=1e-12)
    # a wide band is exact DTW; band 0 of equal lengths is the frame-by-frame distance
    np.testing.assert_allclose(dtw_euclidean(x, y, band=20), dtw_euclidean(x, y), rtol=1e-12)
    np.testing.assert_allclose(
        dtw_euclidean(x, y, band=0), np.sqrt(((x - y) ** 2).sum(axis=(1, 2))), rtol=1e-6
    )
    with pytest.raises(ValueError, match="band"):
        dtw_euclidean(x[:, :10], y, band=1)


def test_dtw_identity_and_symmetry():
    rng = np.random.default_rng(3)
    x = _smooth(rng, (3, 40, 5)) * 10 + 100  # a large offset tests the cancellation guard
    y = _smooth(rng, (3, 35, 5)) * 10 + 100
    np.testing.assert_allclose(dtw_euclidean(x, x), 0.0, atol=1e-5)
    np.testing.assert_array_equal(dtw_abs(x, x), 0.0)
    np.testing.assert_allclose(dtw_euclidean(x, y), dtw_euclidean(y, x), rtol=1e-6)
    np.testing.assert_allclose(dtw_abs(x, y), dtw_abs(y, x), rtol=1e-6)


# ------------------------------------------------------------------------------- compiled DTW (numba)


@pytest.mark.parametrize("lengths", [(31, 26), (20, 33)])
def test_compiled_dtw_equals_numpy_reference(lengths):
    """float32 local costs (on centred inputs) and float64 sums stay within 1e-6 of the float64 reference."""
    rng = np.random.default_rng(20)
    B = 2 * metrics.LANES + 5  # three lane groups, the last one mostly idle
    T, U = lengths
    x = _smooth(rng, (B, T, 7)) * 3 + 50  # an offset that the centring has to absorb
    y = _smooth(rng, (B, U, 7)) * 3 + 50
    for band in (None, abs(T - U), abs(T - U) + 4):
        for fn in (dtw_euclidean, dtw_abs):
            got = fn(x, y, band=band, backend="numba")
            want = fn(x, y, band=band, backend="numpy")
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-6)
    # a single pair: y is broadcast to every lane instead of one y per lane
    np.testing.assert_allclose(
        dtw_euclidean(x[:1], y[:1], backend="numba"), dtw_euclidean(x[:1], y[:1], backend="numpy"), rtol=1e-6
    )


def test_default_subsets_are_one_kernel_call_over_two_atoms():
    cols = list(metrics.resolve_subsets(metrics.SUBSETS, N_COEFFS).values())
    (group,) = dtw_kernels._sq_groups(cols)
    np.testing.assert_array_equal(group.cols, np.arange(N_COEFFS))
    assert group.bounds.tolist() == [0, 52, 52, 58]  # atoms: expression, pose
    np.testing.assert_array_equal(group.weights, [[1, 1], [1, 0], [0, 1]])  # all, expression, pose
    # overlapping subsets are split so that no call needs more than two atoms
    cols = [np.arange(0, 6), np.arange(3, 9), np.array([0, 11]), np.arange(12)]
    groups = dtw_kernels._sq_groups(cols)
    assert [g.subsets.tolist() for g in groups] == [[0], [1, 2], [3]]
    for g in groups:
        for s, w in zip(g.subsets, g.weights, strict=True):
            a, b = g.cols[g.bounds[0] : g.bounds[1]], g.cols[g.bounds[2] : g.bounds[3]]
            chosen = np.concatenate([a] * int(w[0]) + [b] * int(w[1]))
            assert sorted(chosen.tolist()) == sorted(cols[s].tolist())


def test_frdist_compiled_equals_numpy_backend():
    """Overlapping subsets, unequal lengths, a band, and every task kind (full, padded and pooled lanes)."""
    rng = np.random.default_rng(21)
    N, M, T, U, K, D = 6, 5, 24, 27, 9, 12
    P = _smooth(rng, (N, M, T, D))
    L = _smooth(rng, (K, U, D))
    nb = np.zeros((N, K), bool)
    nb[:, 0] = True  # 30 pairs: one full lane group and one padded
    nb[:4, 1] = True  # 20 pairs: one full group and 4 pooled with other neighbours' remainders
    for k in range(N - 1):
        nb[k, 2 + k] = True  # 5 pairs each, all pooled
    subsets = {"a": range(0, 6), "b": range(3, 9), "c": [0, 11], "d": range(12)}
    for dtw in ("euclidean", "abs"):
        for band in (None, 5):
            got = frdist(P, L, nb, subsets, dtw=dtw, band=band, backend="numba")
            want = frdist(P, L, nb, subsets, dtw=dtw, band=band, backend="numpy")
            np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-6)


def _frdist_both_backends(seed: int = 23) -> tuple[dict, dict]:
    """FRDist of the three default subsets (one kernel call over both atoms), compiled and numpy."""
    rng = np.random.default_rng(seed)
    P = _smooth(rng, (3, 6, 29, N_COEFFS))
    L = _smooth(rng, (4, 31, N_COEFFS))
    nb = np.zeros((3, 4), bool)
    nb[:, 0] = True  # 18 pairs against y 0: a full lane group with y shared, 2 left over
    nb[[0, 2], [1, 3]] = True  # 12 more left over, pooled with those two: a lane group with y per lane
    got, want = {}, {}
    for band in (None, 6):  # a band ends columns inside the eight-column blocks
        got[band] = frdist(P, L, nb, band=band, backend="numba")
        want[band] = frdist(P, L, nb, band=band, backend="numpy")
    return got, want


def test_vector_width_follows_the_target_features(monkeypatch):
    numba = pytest.importorskip("numba")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,-avx512f")
    assert not dtw_kernels._wide_vectors()
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert dtw_kernels._wide_vectors()
    assert dtw_kernels._UBLOCK == (8 if dtw_kernels._WIDE else 4)


def test_compiled_dtw_256_bit_path_equals_numpy_reference(tmp_path):
    """The AVX2 path (256-bit vectors, four-column blocks) where this machine takes the AVX-512 one.

    This process runs the host's kernels; a child with AVX-512 masked out of ``NUMBA_CPU_FEATURES`` (and a
    numba cache of its own) compiles what an AVX2-only machine does. Both agree with the float64 reference.
    """
    if not dtw_kernels._WIDE:
        pytest.skip("no AVX-512 here: the kernels above already ran the 256-bit path")
    import os
    import subprocess
    import sys

    import llvmlite.binding as llvm

    masked = ("avx512", "avx10", "evex512", "amx")
    features = [
        "-" + f[1:] if f[1:].startswith(masked) else f
        for f in llvm.get_host_cpu_features().flatten().split(",")
    ]
    got, want = _frdist_both_backends()
    for band in got:
        np.testing.assert_allclose(list(got[band].values()), list(want[band].values()), rtol=1e-6)
    code = (
        "import numpy as np, tests.test_metrics as t\n"
        "from reactdiff.metrics import dtw_kernels\n"
        "assert not dtw_kernels._WIDE and dtw_kernels._UBLOCK == 4\n"
        "got, want = t._frdist_both_backends()\n"
        "for band in got:\n"
        "    np.testing.assert_allclose(list(got[band].values()), list(want[band].values()), rtol=1e-6)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "NUMBA_CPU_FEATURES": ",".join(features),
        "NUMBA_CACHE_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]


def test_compiled_dtw_rejects_bad_input_and_falls_back_without_numba(monkeypatch):
    rng = np.random.default_rng(22)
    x, y = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 6, 3))
    bad = x.copy()
    bad[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        dtw_euclidean(bad, y, backend="numba")
    with pytest.raises(ValueError, match="finite"):
        dtw_abs(x, bad, backend="numba")
    with pytest.raises(ValueError, match="backend"):
        dtw_euclidean(x, y, backend="cython")
    with pytest.raises(ValueError, match="repeats"):
        metrics.resolve_subsets({"twice": [0, 0, 1]}, 3)
    monkeypatch.setattr(_compiled, "numba", None)
    monkeypatch.setattr(_compiled, "_NUMPY_FALLBACK_WARNED", False)
    with pytest.raises(ImportError, match="pip install numba"):
        dtw_euclidean(x, y, backend="numba")
    with pytest.warns(RuntimeWarning, match="numba is not installed"):
        fallback = dtw_euclidean(x, y)
    np.testing.assert_allclose(fallback, dtw_euclidean(x, y, backend="numpy"), rtol=1e-12)


# ------------------------------------------------------------------------------------------ FRCorr, FRDist


@pytest.fixture
def dyads():
    """N=3 clips, M=4 samples, K=6 real reactions, T=40, D=58; A(k) = {k, k + 3}."""
    rng = np.random.default_rng(4)
    N, M, T, K = 3, 4, 40, 6
    L = _smooth(rng, (K, T, N_COEFFS))
    P = _smooth(rng, (N, M, T, N_COEFFS))
    S = _smooth(rng, (N, T, N_COEFFS))
    nb = np.zeros((N, K), bool)
    for k in range(N):
        nb[k, [k, k + 3]] = True
    return P, L, S, nb


def test_frcorr_is_m_when_every_sample_is_an_appropriate_reaction(dyads):
    P, L, _, nb = dyads
    M = P.shape[1]
    P = np.stack([[L[[k, k + 3][i % 2]] for i in range(M)] for k in range(len(P))])
    for value in frcorr(P, L, nb).values():
        assert value == pytest.approx(M, abs=1e-9)


def test_frcorr_takes_the_max_over_appropriate_reactions_only(dyads):
    P, L, _, nb = dyads
    P = P.copy()
    P[0, 0] = L[1]  # a perfect match, but L[1] is not appropriate to speaker clip 0
    got = frcorr(P, L, nb, subsets=("all",))["all"]
    per_clip = [
        sum(max(ccc(P[k, i], L[j]).mean() for j in (k, k + 3)) for i in range(P.shape[1])) for k in range(3)
    ]
    assert got == pytest.approx(np.mean(per_clip), abs=1e-9)
    assert got < 1.0  # nowhere near the 1 that counting L[1] would add


def test_frdist_zero_for_exact_matches_and_matches_hand_computation(dyads):
    P, L, _, nb = dyads
    exact = np.stack([[L[[k, k + 3][i % 2]] for i in range(P.shape[1])] for k in range(len(P))])
    for value in frdist(exact, L, nb).values():
        assert value == pytest.approx(0.0, abs=1e-5)
    got = frdist(P, L, nb)
    got_abs = frdist(P, L, nb, dtw="abs")
    for name, cols in [("all", slice(None)), ("expression", EXPRESSION), ("pose", POSE)]:
        want, want_abs = [], []
        for k in range(3):
            x = P[k][:, :, cols]
            d = [dtw_euclidean(x, np.broadcast_to(L[j][:, cols], x.shape)) for j in (k, k + 3)]
            a = [dtw_abs(x, np.broadcast_to(L[j][:, cols], x.shape)).sum(axis=1) for j in (k, k + 3)]
            want.append(np.minimum(*d).sum())
            want_abs.append(np.minimum(*a).sum())
        assert got[name] == pytest.approx(np.mean(want), rel=1e-6)
        assert got_abs[name] == pytest.approx(np.mean(want_abs), rel=1e-6)


def test_frdist_in_parallel_batches_and_small_memory_agrees(dyads):
    P, L, _, nb = dyads
    nb = nb.copy()
    nb[1, :] = True  # more neighbours than one fill holds under a tiny budget
    for backend in ("numba", "numpy"):
        serial = frdist(P, L, nb, backend=backend)
        small = frdist(P, L, nb, max_bytes=1, backend=backend)
        np.testing.assert_allclose(list(small.values()), list(serial.values()), rtol=1e-9)
        parallel = frdist(P, L, nb, workers=2, backend=backend)  # threads with numba, processes with numpy
        np.testing.assert_allclose(list(parallel.values()), list(serial.values()), rtol=1e-12)


def test_clip_without_neighbours_is_left_out(dyads):
    P, L, _, nb = dyads
    nb = nb.copy()
    nb[2] = False
    kept = frcorr(P[:2], L, nb[:2])
    np.testing.assert_allclose(list(frcorr(P, L, nb).values()), list(kept.values()))
    np.testing.assert_allclose(list(frdist(P, L, nb).values()), list(frdist(P[:2], L, nb[:2]).values()))


# ---------------------------------------------------------------------------------------------- diversity


def test_frdiv_closed_forms():
    rng = np.random.default_rng(5)
    same = np.broadcast_to(rng.normal(size=(3, 1, 20, 58)), (3, 5, 20, 58))
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in frdiv(same).values())
    # one clip, two samples: ordered pairs (0,1) and (1,0) both give mean((a - b)^2)
    a = np.array([[1.0, 2.0], [3.0, 5.0], [0.0, 1.0]])
    b = np.array([[2.0, 2.0], [1.0, 5.0], [0.0, 4.0]])
    P = np.stack([a, b])[None]
    want = ((1 - 2) ** 2 + 0 + (3 - 1) ** 2 + 0 + 0 + (1 - 4) ** 2) / 6
    assert frdiv(P, {"both": [0, 1]})["both"] == pytest.approx(want)
    assert frdiv(P, {"first": [0]})["first"] == pytest.approx((1 + 4 + 0) / 3)
    # three samples: mean over the 6 ordered pairs, computed by brute force
    P3 = rng.normal(size=(2, 3, 7, 4))
    brute = np.mean(
        [((P3[k, i] - P3[k, j]) ** 2).mean() for k in range(2) for i in range(3) for j in range(3) if i != j]
    )
    assert frdiv(P3, {"x": range(4)})["x"] == pytest.approx(brute)
    assert frdiv(P3[:, :1], {"x": range(4)})["x"] == 0.0


def test_frvar_is_the_unbiased_variance_over_time():
    x = np.array([1.0, 2.0, 4.0, 7.0])  # mean 3.5, squared deviations 6.25 2.25 0.25 12.25 -> 21 / 3
    P = np.stack([x, 2 * x], axis=-1)[None, None]  # [1, 1, 4, 2]
    assert frvar(P, {"a": [0]})["a"] == pytest.approx(7.0)
    assert frvar(P, {"b": [1]})["b"] == pytest.approx(28.0)
    assert frvar(P, {"ab": [0, 1]})["ab"] == pytest.approx(np.var(P[0, 0], axis=0, ddof=1).mean())


def test_jitter_is_the_mean_squared_acceleration():
    x = np.array([0.0, 1.0, 4.0, 9.0, 16.0])  # t^2: second difference 2 everywhere -> jitter 4
    line = np.array([3.0, 5.0, 7.0, 9.0, 11.0])  # constant velocity: no jitter
    P = np.stack([x, line], axis=-1)[None, None]  # [1, 1, 5, 2]
    assert jitter(P, {"a": [0]})["a"] == pytest.approx(4.0)
    assert jitter(P, {"b": [1]})["b"] == pytest.approx(0.0)
    assert jitter(P, {"ab": [0, 1]})["ab"] == pytest.approx(2.0)
    zigzag = np.array([0.0, 1.0, 0.0, 1.0])[None, None, :, None]  # second differences -2, 2 -> 4
    assert jitter(zigzag, {"z": [0]})["z"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="at least 3 frames"):
        jitter(np.zeros((1, 1, 2, 1)), {"z": [0]})


def test_frdvs_closed_forms():
    rng = np.random.default_rng(6)
    same = np.broadcast_to(rng.normal(size=(1, 3, 20, 58)), (4, 3, 20, 58))
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in frdvs(same).values())
    P = rng.normal(size=(3, 2, 5, 4))
    brute = np.mean(
        [((P[k, i] - P[l, i]) ** 2).mean() for i in range(2) for k in range(3) for l in range(3) if k != l]
    )
    assert frdvs(P, {"x": range(4)})["x"] == pytest.approx(brute)
    assert math.isnan(frdvs(P[:1], {"x": range(4)})["x"])


# ---------------------------------------------------------------------------------------------- synchrony


def _delayed(rng, N, M, T, D, delays, pad=30):
    """Speaker S and reactions P[k, i] = S[k] delayed by delays[i] frames (P[t] = S[t - d])."""
    z = _smooth(rng, (N, T + 2 * pad, D), width=5)
    S = z[:, pad : pad + T]
    P = np.stack([z[:, pad - d : pad - d + T] for d in delays], axis=1)
    return P, S


@pytest.mark.parametrize("d", [0, 5, -7, 20])
def test_frsyn_recovers_the_delay(d):
    P, S = _delayed(np.random.default_rng(7), 3, 2, 200, 6, [d, d])
    assert frsyn(P, S, {"x": range(6)})["x"] == abs(d)
    r = tlcc(P[0, 0], S[0])
    assert r.shape == (6, 2 * metrics.SYN_MAX_LAG + 1)
    assert np.all(np.argmax(r, axis=1) == metrics.SYN_MAX_LAG + d)


def test_frsyn_excludes_constant_channels_instead_of_pinning_them():
    P, S = _delayed(np.random.default_rng(8), 2, 3, 200, 6, [4, 4, 4])
    S[:, :, :2] = 0.25  # constant speaker channels
    P = P.copy()
    P[:, :, :, 5] = 0.0  # a constant reaction channel
    res = compute_all(
        P, np.zeros((2, 200, 6)) + P[:, 0], S, np.eye(2, dtype=bool), {"x": range(6)}, window=50
    )
    assert res["x"]["FRSyn"] == 4.0  # the public code would report 49
    assert res["x"]["FRSyn_excluded_channels"] == 2 * 3 * 3  # clips x samples x (2 + 1) channels
    assert res["x"]["FRSyn_excluded_reactions"] == 0
    # a reaction with only constant channels has no peak: it is left out and counted
    only_const = frsyn(P, S, {"c": [0, 1, 5]})
    assert math.isnan(only_const["c"])
    res = compute_all(P, P[:, 0], S, np.eye(2, dtype=bool), {"c": [0, 1, 5]}, window=50)
    assert res["c"]["FRSyn_excluded_reactions"] == 6
    assert res["c"]["FRSyn_reactions"] == 0


def test_frsyn_uses_every_sample():
    P, S = _delayed(np.random.default_rng(9), 2, 4, 200, 5, [0, 10, 10, 10])
    # (0 + 10 + 10 + 10) / 4; the public code scores sample 0 only and would report 0
    assert frsyn(P, S, {"x": range(5)})["x"] == pytest.approx(7.5)


# ---------------------------------------------------------------------------------------------- realism


def _exact_moments(rng, n, mean, std):
    """Samples with exactly the given sample mean and (ddof=1) covariance diag(std^2)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(axis=0)
    white = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False))).T)
    return np.asarray(mean) + white * np.asarray(std)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(10)
    a = _exact_moments(rng, 400, [0.0], [1.0])
    b = _exact_moments(rng, 300, [2.0], [3.0])
    assert frechet_distance(a, b) == pytest.approx((0 - 2) ** 2 + (1 - 3) ** 2)
    m1, s1 = np.array([0.0, 1.0, -1.0]), np.array([1.0, 0.5, 2.0])
    m2, s2 = np.array([0.5, 1.0, 1.0]), np.array([2.0, 0.5, 1.0])
    a, b = _exact_moments(rng, 500, m1, s1), _exact_moments(rng, 600, m2, s2)
    want = ((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(want)
    assert frechet_distance(b, a) == pytest.approx(want)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_agrees_with_sqrtm_and_survives_singular_covariances():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(200, 4)) @ rng.normal(size=(4, 4))
    b = rng.normal(size=(150, 4)) @ rng.normal(size=(4, 4)) + 1.0
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = np.real(scipy.linalg.sqrtm(ca @ cb))
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    # rank-deficient: a constant feature and a duplicated feature, fewer samples than features
    c = rng.normal(size=(5, 8))
    c[:, 3] = 1.0
    c[:, 4] = c[:, 0]
    value = frechet_distance(c, c + 0.1)
    assert np.isfinite(value) and value == pytest.approx(8 * 0.1**2, abs=1e-6)


def test_window_features_by_hand():
    x = np.array([0.0, 1.0, 3.0, 6.0, 6.0, 6.0])[:, None]  # one sequence, one dim
    stats = window_features(x, "stats", window=3)
    np.testing.assert_allclose(stats, [[4 / 3, np.std([0, 1, 3])], [6.0, 0.0]])
    dyn = window_features(x, "dynamics", window=3)
    # velocities 1, 2 | 0, 0; accelerations 1 | 0
    np.testing.assert_allclose(dyn, [[1.5, 1.0], [0.0, 0.0]])
    assert window_features(np.zeros((2, 3, 10, 4)), "stats", window=5).shape == (2 * 3 * 2, 8)
    custom = window_features(x, lambda w: w.max(axis=1), window=2, hop=1)
    np.testing.assert_allclose(custom[:, 0], [1, 3, 6, 6, 6])
    assert window_features(np.zeros((2, 10, 58)), "stats", 5, columns=POSE).shape == (4, 12)


def test_real_floor_is_near_zero_for_iid_halves():
    rng = np.random.default_rng(12)
    real = _smooth(rng, (80, 100, 3))
    floor = real_floor(real, "stats", window=25)
    shifted = frechet_distance(window_features(real, "stats", 25), window_features(real + 0.5, "stats", 25))
    assert shifted == pytest.approx(3 * 0.5**2, rel=1e-6)  # a pure mean shift
    assert 0 <= floor < 0.1 * shifted


# ---------------------------------------------------------------------------------------------- compute_all


def test_compute_all_uses_the_right_columns(dyads):
    P, L, S, nb = dyads
    P = P.copy()
    P[:, :, :, EXPRESSION] = 0.5  # constant expression, varying pose
    for k in range(3):
        P[k, :, :, POSE] = L[k][:, POSE]  # pose copies an appropriate reaction
    res = compute_all(P, L, S, nb, window=20)
    M = P.shape[1]
    assert set(res) == {"all", "expression", "pose"}
    assert res["expression"]["FRVar"] == 0.0 and res["pose"]["FRVar"] > 0
    want_all = (52 * res["expression"]["FRVar"] + 6 * res["pose"]["FRVar"]) / 58
    assert res["all"]["FRVar"] == pytest.approx(want_all)
    assert res["pose"]["FRCorr"] == pytest.approx(M)
    assert res["expression"]["FRCorr"] < M
    assert res["pose"]["FRDist"] == pytest.approx(0.0, abs=1e-5)
    assert res["expression"]["FRDiv"] == 0.0 and res["pose"]["FRDiv"] == 0.0
    assert res["expression"]["constant_channels"] == 3 * M * 52
    assert res["pose"]["constant_channels"] == 0
    assert math.isnan(res["expression"]["FRSyn"]) and res["expression"]["FRSyn_excluded_reactions"] == 3 * M
    for name, idx in metrics.resolve_subsets(("all", "expression", "pose"), N_COEFFS).items():
        for kind in ("stats", "dynamics"):
            generated = metrics.window_features(P, kind, 20, columns=idx)
            real = metrics.window_features(L, kind, 20, columns=idx)
            assert res[name][f"FD_{kind}"] == pytest.approx(metrics.frechet_distance(generated, real))
        assert res[name]["clips_without_neighbours"] == 0
    # A frozen expression is further from the real ones than real reactions are from each other.
    assert res["expression"]["FD_dynamics"] > res["expression"]["FD_dynamics_real_floor"] > 0


def test_compute_all_threads_give_the_same_results_and_floors(dyads):
    P, L, S, nb = dyads
    one = compute_all(P, L, S, nb, window=20, seed=3)
    two = compute_all(P, L, S, nb, window=20, seed=3, workers=2)
    assert one.keys() == two.keys()
    for name in one:
        assert list(one[name]) == list(two[name])  # same metrics in the same order
        # Equal up to the order of BLAS's sums, which depends on how many threads it gets alongside others.
        np.testing.assert_allclose(list(one[name].values()), list(two[name].values()), rtol=1e-8)
        # the floor from the features of all real clips is real_floor's value, drawn the same way
        for kind in ("stats", "dynamics"):
            cols = metrics.SUBSETS[name]
            assert one[name][f"FD_{kind}_real_floor"] == real_floor(L, kind, 20, seed=3, columns=cols)


def test_compute_all_rejects_mismatched_shapes(dyads):
    P, L, S, nb = dyads
    with pytest.raises(ValueError, match="neighbour matrix"):
        compute_all(P, L, S, nb[:, :4])
    with pytest.raises(ValueError, match="shapes"):
        compute_all(P, L, S[:2], nb)
    with pytest.raises(ValueError, match="unknown subsets"):
        compute_all(P, L, S, nb, subsets=("mouth",))


# ------------------------------------------------------------------------- compiled paths vs numpy paths


def _extremes(windows):
    """A callable window feature: per-dimension min and max."""
    return np.concatenate([windows.min(axis=1), windows.max(axis=1)], axis=1)


def _numpy_only(monkeypatch):
    """Make the module take its numpy paths, as on a machine without numba."""
    monkeypatch.setattr(_compiled, "numba", None)
    monkeypatch.setattr(_compiled, "_NUMPY_FALLBACK_WARNED", True)


def test_compiled_diversity_frcorr_and_windows_equal_the_numpy_paths(monkeypatch, dyads):
    """One fused pass for FRDiv/FRVar/Jitter/FRDvs/constant channels, the FRCorr kernel and the window
    kernels give the numpy paths' values, on float32 input with constant and identical channels."""
    P, L, S, nb = dyads
    P = P.astype(np.float32)
    P[1, :, :, 3] = 0.5  # constant over time in every sample of clip 1
    P[2, 1] = P[2, 0]  # two identical samples
    nb = nb.copy()
    nb[0, :] = True  # |A(k)| differs between clips
    nb[2] = False  # a clip without neighbours
    subsets = {"all": range(58), "odd": [1, 3, 57], "pose": POSE}
    metric_fns = (frdiv, frvar, jitter, frdvs)
    compiled = [fn(P, subsets) for fn in metric_fns] + [frcorr(P, L, nb, subsets)]
    variants = [
        (k, hop, c) for k in ("stats", "dynamics", _extremes) for hop in (None, 4) for c in (None, [2, 5])
    ]
    feats = [window_features(P, k, 9, hop, c) for k, hop, c in variants]
    everything = compute_all(P, L, S, nb, subsets, window=10)
    _numpy_only(monkeypatch)
    reference = [fn(P, subsets) for fn in metric_fns] + [frcorr(P, L, nb, subsets)]
    for got, want in zip(compiled, reference, strict=True):
        np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-12)
    ref_feats = [window_features(P, k, 9, hop, c) for k, hop, c in variants]
    for got, want in zip(feats, ref_feats, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    ref_all = compute_all(P, L, S, nb, subsets, window=10, backend="numpy")
    for name in subsets:
        assert list(everything[name]) == list(ref_all[name])  # same metrics, same order
        np.testing.assert_allclose(
            list(everything[name].values()), list(ref_all[name].values()), rtol=1e-6
        )  # FRDist: float32 local costs in the compiled DTW
    assert everything["odd"]["constant_channels"] == P.shape[1]  # channel 3 of clip 1, every sample


def test_window_moments_are_the_window_sums():
    rng = np.random.default_rng(23)
    z = rng.normal(size=(2, 3, 40))
    for max_lag in (0, 5, 38):
        lags, xa, xb, ya, yb = synchrony._lag_windows(40, max_lag)
        for a, b in ((xa, xb), (ya, yb)):
            s1, s2 = synchrony._window_moments(z, a, b)
            want1 = np.stack([z[..., i:j].sum(axis=-1) for i, j in zip(a, b, strict=True)], axis=-1)
            want2 = np.stack([(z[..., i:j] ** 2).sum(axis=-1) for i, j in zip(a, b, strict=True)], axis=-1)
            np.testing.assert_allclose(s1, want1, atol=1e-12)
            np.testing.assert_allclose(s2, want2, atol=1e-12)
