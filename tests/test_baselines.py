import numpy as np
import pytest

from reactdiff.baselines import (
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
