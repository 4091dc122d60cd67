import numpy as np
import pytest

from reactdiff.baselines import (
    appropriate_indices,
    appropriate_real,
    gt,
    mirror,
    nearest_neighbour,
    random_gaussian,
    repeat_samples,
    train_statistics,
)
from reactdiff.metrics import frcorr, frdiv, frsyn


def test_gt_and_mirror_repeat_the_clip_as_read_only_views():
    rng = np.random.default_rng(0)
    listener = rng.normal(size=(3, 20, 58)).astype(np.float32)
    speaker = rng.normal(size=(3, 20, 58)).astype(np.float32)
    G, Mi = gt(listener, samples=4), mirror(speaker, samples=4)
    assert G.shape == Mi.shape == (3, 4, 20, 58)
    for i in range(4):
        np.testing.assert_array_equal(G[:, i], listener)
        np.testing.assert_array_equal(Mi[:, i], speaker)
    assert not G.flags.writeable and np.shares_memory(G, listener)  # M copies cost no memory
    with pytest.raises(ValueError):
        repeat_samples(listener[0])
    with pytest.raises(ValueError):
        repeat_samples(listener, 0)


def test_gt_scores_m_on_frcorr_and_mirror_zero_on_frsyn():
    rng = np.random.default_rng(1)
    z = np.cumsum(rng.normal(size=(4, 120, 6)), axis=1)
    listener, speaker = z[:2], z[2:]
    nb = np.array([[True, False], [False, True]])
    assert frcorr(gt(listener, 5), listener, nb, {"x": range(6)})["x"] == pytest.approx(5.0)
    assert frdiv(gt(listener, 5), {"x": range(6)})["x"] == 0.0
    assert frsyn(mirror(speaker, 3), speaker, {"x": range(6)})["x"] == 0.0


def test_train_statistics_and_random_gaussian():
    rng = np.random.default_rng(2)
    train = rng.normal(loc=[1.0, -2.0, 0.0], scale=[0.5, 2.0, 1.0], size=(10, 50, 3))
    mean, std = train_statistics(train)
    np.testing.assert_allclose(mean, train.reshape(-1, 3).mean(0))
    np.testing.assert_allclose(std, train.reshape(-1, 3).std(0))

    shape = (20, 10, 100, 3)
    a = random_gaussian(mean, std, shape, seed=7)
    assert a.shape == shape and a.dtype == np.float32
    np.testing.assert_array_equal(a, random_gaussian(mean, std, shape, seed=7))  # deterministic
    assert not np.array_equal(a, random_gaussian(mean, std, shape, seed=8))
    flat = a.reshape(-1, 3).astype(np.float64)
    # 20000 draws per dim: the sample mean is within 5 standard errors, the std within 3 %
    np.testing.assert_allclose(flat.mean(0), mean, atol=5 * std.max() / np.sqrt(len(flat)))
    np.testing.assert_allclose(flat.std(0), std, rtol=0.03)
    assert frdiv(a, {"x": range(3)})["x"] > 0  # M different draws
    assert not np.array_equal(a[:, 0], a[:, 1])
    with pytest.raises(ValueError):
        random_gaussian(mean[:2], std, shape)


def test_nearest_neighbour_returns_the_listener_segment_of_the_exact_match():
    rng = np.random.default_rng(3)
    K, T, F, D, seg = 5, 40, 4, 6, 10
    keys = rng.normal(size=(K, T, F)) + 50.0  # a large offset tests the cancellation guard
    listener = rng.normal(size=(K, T, D))
    # query: segment 0 copies train clip 3 frames 20-29, segment 1 clip 0 frames 0-9,
    # segment 2 clip 4 frames 30-39; the trailing 5 frames match the start of clip 1's segment 10-19
    query = np.concatenate([keys[3, 20:30], keys[0, 0:10], keys[4, 30:40], keys[1, 10:15]])[None]
    out = nearest_neighbour(query, keys, listener, segment=seg)
    want = np.concatenate([listener[3, 20:30], listener[0, 0:10], listener[4, 30:40], listener[1, 10:15]])
    assert out.shape == (1, 35, D)
    np.testing.assert_array_equal(out[0], want)
    # a tiny memory budget chunks queries and entries without changing the answer
    np.testing.assert_array_equal(nearest_neighbour(query, keys, listener, seg, max_bytes=1), out)
    # with hop 5 the database also holds segments at frames 5, 15, ...
    query = keys[2, 5:15][None] + 1e-3 * rng.normal(size=(1, 10, F))
    np.testing.assert_array_equal(nearest_neighbour(query, keys, listener, seg, hop=5)[0], listener[2, 5:15])


def test_causal_nearest_neighbour_keys_each_segment_on_the_frames_ending_at_its_start():
    rng = np.random.default_rng(4)
    K, T, F, D, seg = 5, 40, 4, 6, 10
    keys = rng.normal(size=(K, T, F))
    listener = rng.normal(size=(K, T, D))
    # the database pairs speaker frames [u - 9, u] with listener frames [u, u + 10), u = 0, 10, 20, 30
    # (frames before 0 repeat frame 0). Query segment [10, 20) is keyed on query frames 1..10: make them
    # clip 2's frames 11..20, so it takes clip 2's listener frames 20..29.
    query = rng.normal(size=(1, T, F))
    query[0, 1:11] = keys[2, 11:21]
    out = nearest_neighbour(query, keys, listener, segment=seg, causal=True)
    np.testing.assert_array_equal(out[0, 10:20], listener[2, 20:30])
    # segment 0 sees query frame 0 only (repeated): equal to clip 3's frame 0 it takes clip 3's first segment
    query[0, 0] = keys[3, 0]
    out = nearest_neighbour(query, keys, listener, seg, causal=True)
    np.testing.assert_array_equal(out[0, :10], listener[3, :10])


def test_causal_nearest_neighbour_never_reads_a_later_query_frame():
    rng = np.random.default_rng(5)
    keys, listener = rng.normal(size=(6, 48, 3)), rng.normal(size=(6, 48, 2))
    query = rng.normal(size=(2, 48, 3))
    causal = nearest_neighbour(query, keys, listener, segment=8, causal=True)
    plain = nearest_neighbour(query, keys, listener, segment=8)
    for t in (0, 7, 8, 23, 40):
        changed = query.copy()
        changed[:, t + 1 :] = rng.normal(size=changed[:, t + 1 :].shape)
        np.testing.assert_array_equal(
            nearest_neighbour(changed, keys, listener, segment=8, causal=True)[:, : t + 1], causal[:, : t + 1]
        )
    # the paper's baseline does read ahead: query frames 9..15 made clip c's pull frame 8 to clip c's
    c = next(c for c in range(6) if not np.array_equal(plain[0, 8], listener[c, 8]))
    changed = query.copy()
    changed[0, 9:16] = keys[c, 9:16]
    np.testing.assert_array_equal(nearest_neighbour(changed, keys, listener, segment=8)[0, 8], listener[c, 8])


def test_nearest_neighbour_standardise_weighs_features_equally():
    # feature 0 has a huge scale; without standardising it alone decides the neighbour
    keys = np.zeros((2, 4, 2))
    keys[0, :, 0], keys[0, :, 1] = 1000.0, 0.0  # close on feature 1 to the query, far on feature 0
    keys[1, :, 0], keys[1, :, 1] = 1030.0, 5.0
    listener = np.stack([np.zeros((4, 1)), np.ones((4, 1))])
    query = np.zeros((1, 4, 2))
    query[0, :, 0], query[0, :, 1] = 1020.0, 0.0
    # per frame: clip 0 is 20^2 + 0 = 400 away, clip 1 is 10^2 + 5^2 = 125 away
    assert nearest_neighbour(query, keys, listener, 4)[0, 0, 0] == 1.0
    # in train-std units (means 1015 and 2.5, stds 15 and 2.5) the query is (1/3, -1), clip 0 is (-1, -1)
    # and clip 1 is (1, 1): squared distances 16/9 and 4/9 + 4, so clip 0 wins
    assert nearest_neighbour(query, keys, listener, 4, standardise=True)[0, 0, 0] == 0.0


def test_nearest_neighbour_validates_shapes():
    keys = np.zeros((2, 10, 3))
    with pytest.raises(ValueError):
        nearest_neighbour(np.zeros((1, 10, 4)), keys, np.zeros((2, 10, 5)), 5)
    with pytest.raises(ValueError):
        nearest_neighbour(np.zeros((1, 10, 3)), keys, np.zeros((2, 9, 5)), 5)
    with pytest.raises(ValueError):
        nearest_neighbour(np.zeros((1, 10, 3)), keys, np.zeros((2, 10, 5)), 11)


def _members(P_k: np.ndarray, L: np.ndarray) -> list[int]:
    """The index into ``L`` of each reaction of ``P_k`` ``[M, T, D]`` (exactly equal), -1 when none."""
    return [next((j for j in range(len(L)) if np.array_equal(x, L[j])), -1) for x in P_k]


def test_appropriate_real_draws_members_of_a_k_distinct_when_it_can_and_evenly_when_it_cannot():
    rng = np.random.default_rng(4)
    L = rng.normal(size=(6, 12, 3)).astype(np.float32)  # six distinguishable real reactions
    nb = np.zeros((4, 6), bool)
    nb[0, [0, 1, 2, 4]] = True  # |A| = 4 >= M = 3: three distinct members
    nb[1, [3]] = True  # |A| = 1: the one member three times
    nb[2, [1, 4]] = True  # |A| = 2 = 1 * 2 + 1: both members, one of them twice
    nb[3, [0, 2, 3, 5]] = True
    for seed in range(20):
        P = appropriate_real(L, nb, samples=3, seed=seed)
        assert P.shape == (4, 3, 12, 3) and P.dtype == np.float32
        idx = appropriate_indices(nb, samples=3, seed=seed)
        drawn = [_members(P[k], L) for k in range(4)]
        assert drawn == idx.tolist()  # each sample is exactly the real reaction it names
        for k in range(4):
            assert set(drawn[k]) <= set(np.flatnonzero(nb[k]).tolist())
        assert len(set(drawn[0])) == 3 and len(set(drawn[3])) == 3
        assert drawn[1] == [3, 3, 3]
        assert sorted(np.bincount(drawn[2], minlength=5)[[1, 4]].tolist()) == [1, 2]
    # M = 7 from |A| = 3 (7 = 2 * 3 + 1): every member twice, one of them a third time
    three = np.array([[True, True, False, False, True, False]])
    for seed in range(10):
        counts = np.bincount(appropriate_indices(three, 7, seed=seed)[0], minlength=6)
        assert sorted(counts[[0, 1, 4]].tolist()) == [2, 2, 3] and counts.sum() == 7
    # |A| = M: a permutation of A(k)
    assert sorted(appropriate_indices(nb[[0]], 4, seed=5)[0].tolist()) == [0, 1, 2, 4]


def test_appropriate_real_follows_a_k_for_the_clips_own_reaction():
    # A(k) as the metrics read it: the own reaction (column k) is drawn when the matrix marks it, like
    # any other member, and never when it does not.
    own_in = np.array([[True, True, True], [True, True, False]])
    own_out = np.array([[False, True, True], [True, False, False]])
    first_in = {int(appropriate_indices(own_in, 1, seed=s)[0, 0]) for s in range(40)}
    assert first_in == {0, 1, 2}
    draws_out = np.concatenate([appropriate_indices(own_out, 2, seed=s) for s in range(40)])
    assert set(draws_out[0::2].ravel().tolist()) == {1, 2} and set(draws_out[1::2].ravel().tolist()) == {0}


def test_appropriate_real_is_seeded():
    rng = np.random.default_rng(5)
    L = rng.normal(size=(20, 8, 2))
    nb = np.ones((10, 20), bool)
    a = appropriate_real(L, nb, samples=5, seed=11)
    np.testing.assert_array_equal(a, appropriate_real(L, nb, samples=5, seed=11))
    assert not np.array_equal(appropriate_indices(nb, 5, seed=11), appropriate_indices(nb, 5, seed=12))
    assert not np.array_equal(a, appropriate_real(L, nb, samples=5, seed=12))


def test_appropriate_real_fits_reactions_of_other_lengths():
    # reactions of 5, 3 and 4 frames: the default length is the shortest (crop), a longer one holds the
    # last frame of the short reactions
    L = [np.arange(5.0)[:, None] + 10 * j for j in range(3)]
    L[1] = np.array([[7.0], [8.0], [9.0]])
    nb = np.array([[True, False, False], [False, True, False], [False, False, True]])
    P = appropriate_real(L, nb, samples=2, seed=0)
    assert P.shape == (3, 2, 3, 1)
    np.testing.assert_array_equal(P[1, 1, :, 0], [7.0, 8.0, 9.0])
    np.testing.assert_array_equal(P[2, 0, :, 0], [20.0, 21.0, 22.0])
    P = appropriate_real(L, nb, samples=2, seed=0, frames=6)
    np.testing.assert_array_equal(P[1, 0, :, 0], [7.0, 8.0, 9.0, 9.0, 9.0, 9.0])
    np.testing.assert_array_equal(P[0, 1, :, 0], [0.0, 1.0, 2.0, 3.0, 4.0, 4.0])
    # an array pool is cropped and held the same way
    arr = np.stack([x[:3] for x in L])
    np.testing.assert_array_equal(
        appropriate_real(arr, nb, 2, seed=0, frames=2), arr[[[0, 0], [1, 1], [2, 2]], :2]
    )
    np.testing.assert_array_equal(appropriate_real(arr, nb, 2, seed=0, frames=4)[1, 0, :, 0], [7, 8, 9, 9])


def test_appropriate_real_rejects_an_empty_a_k_and_bad_shapes():
    L = np.zeros((3, 4, 2))
    nb = np.array([[True, False, True], [False, False, False], [False, True, False]])
    with pytest.raises(ValueError, match=r"1 of 3 clips .*empty A\(k\).*\[1\]"):
        appropriate_real(L, nb, samples=2)
    with pytest.raises(ValueError, match="one column per real reaction"):
        appropriate_real(L, np.ones((3, 2), bool))
    with pytest.raises(ValueError):
        appropriate_real(L, np.ones((3, 3), bool), samples=0)
    with pytest.raises(ValueError):
        appropriate_real([np.zeros((4, 2)), np.zeros((4, 3))], np.ones((1, 2), bool))


def test_appropriate_real_frdiv_is_the_spread_of_the_real_set():
    # Constant reactions a = 1, b = 3, c = 10 (every frame and dim). Clip 0: A = {a, b}, M = 2, so both are
    # drawn once and every frame and dim gives 2 * var_ddof1(1, 3) = (1 - 3)^2 = 4; clip 1: A = {c}, two
    # copies, 0. FRDiv = (4 + 0) / 2 = 2.
    T, D = 6, 4
    L = np.stack([np.full((T, D), v) for v in (1.0, 3.0, 10.0)])
    nb = np.array([[True, True, False], [False, False, True]])
    cols = {"x": range(D)}
    P = appropriate_real(L, nb, samples=2, seed=0)
    assert frdiv(P, cols)["x"] == pytest.approx(2.0)
    # Three members 0, 1, 5 and M = 3: each once; mean over ordered pairs of the squared differences is
    # (1 + 25 + 16) * 2 / 6 = 14 (= 2 * var_ddof1: mean 2, (4 + 1 + 9) / 2 = 7).
    L = np.stack([np.full((T, D), v) for v in (0.0, 1.0, 5.0)])
    assert frdiv(appropriate_real(L, np.ones((1, 3), bool), samples=3, seed=1), cols)["x"] == pytest.approx(
        14.0
    )


def test_appropriate_real_scores_m_on_frcorr():
    # every sample is a member of A(k), so its best CCC is 1 (itself): FRCorr = M
    rng = np.random.default_rng(6)
    L = np.cumsum(rng.normal(size=(5, 80, 6)), axis=1)
    nb = np.eye(5, dtype=bool) | np.eye(5, k=1, dtype=bool) | np.eye(5, k=-3, dtype=bool)
    P = appropriate_real(L, nb, samples=4, seed=0)
    assert frcorr(P, L, nb, {"x": range(6)})["x"] == pytest.approx(4.0)
    assert frdiv(P, {"x": range(6)})["x"] > 0
