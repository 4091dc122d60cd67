import numpy as np
import pytest
import torch

from reactdiff import metrics, realism
from reactdiff.realism import (
    CHECKPOINT_FORMAT,
    CORRUPTIONS,
    RealismConfig,
    corrupt,
    load_encoder,
    save_encoder,
    train_realism_encoder,
)

SUBSETS = {"all": slice(0, 6), "first": [0, 1, 2], "rest": [3, 4, 5]}
TINY = RealismConfig(window=16, embedding_dim=8, channels=8, steps=8, batch_size=8, seed=3)


def _smooth_clips(rng, clips, frames=96, dims=6):
    """Smooth random motion: moving averages of white noise, each clip with its own width and scale."""
    out = np.empty((clips, frames, dims))
    for k in range(clips):
        width = int(rng.integers(4, 12))
        z = rng.normal(size=(frames + width, dims))
        c = np.cumsum(z, axis=0)
        out[k] = (c[width:] - c[:-width]) / np.sqrt(width) * rng.uniform(0.5, 2.0) + rng.normal(size=dims)
    return out


@pytest.fixture(scope="module")
def trained():
    """An encoder trained long enough to have learned something (a few seconds on 2 CPU cores)."""
    rng = np.random.default_rng(0)
    train = _smooth_clips(rng, 48)
    config = RealismConfig(window=16, embedding_dim=16, channels=16, steps=150, batch_size=16, seed=0)
    return train_realism_encoder(train, config, SUBSETS, device="cpu"), rng


def test_training_is_deterministic_under_the_seed():
    train = _smooth_clips(np.random.default_rng(1), 12)
    a = train_realism_encoder(train, TINY, SUBSETS, device="cpu")
    b = train_realism_encoder(train, TINY, SUBSETS, device="cpu")
    other = train_realism_encoder(train, RealismConfig(**{**TINY.__dict__, "seed": 4}), SUBSETS, device="cpu")
    windows = np.lib.stride_tricks.sliding_window_view(train[0], 16, axis=0)[::16].transpose(0, 2, 1)
    for subset in SUBSETS:
        cols = metrics.resolve_subsets(SUBSETS, 6)[subset]
        for (_, ma), (_, mb) in [(a.models[subset], b.models[subset])]:
            for key, value in ma.state_dict().items():
                assert torch.equal(value, mb.state_dict()[key]), key
        np.testing.assert_array_equal(
            a.embed(windows[..., cols], subset), b.embed(windows[..., cols], subset)
        )
        assert not np.array_equal(
            a.embed(windows[..., cols], subset), other.embed(windows[..., cols], subset)
        )
    assert a.stats["all"]["final_loss"] == b.stats["all"]["final_loss"]


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    train = _smooth_clips(np.random.default_rng(2), 12)
    encoder = train_realism_encoder(train, TINY, SUBSETS, device="cpu")
    path = tmp_path / "realism" / "encoder.pt"
    save_encoder(encoder, path)
    payload = torch.load(path, weights_only=True)  # a plain dict: no pickled classes
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["config"]["window"] == 16 and payload["config"]["seed"] == 3
    np.testing.assert_allclose(payload["mean"].numpy(), train.reshape(-1, 6).mean(0))
    loaded = load_encoder(path, device="cpu")
    assert loaded.config == encoder.config and loaded.subsets == ["all", "first", "rest"]
    windows = train[:3, :16]
    for subset, cols in [("all", slice(None)), ("first", [0, 1, 2]), ("rest", [3, 4, 5])]:
        np.testing.assert_array_equal(
            loaded.embed(windows[..., cols], subset), encoder.embed(windows[..., cols], subset)
        )
    np.testing.assert_array_equal(loaded.models["rest"][0], [3, 4, 5])


def test_learned_fd_sees_destroyed_dynamics_far_above_the_real_floor(trained):
    encoder, rng = trained
    real = _smooth_clips(rng, 40)  # held-out clips of the same process
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in real])  # same frames, no dynamics
    noise = rng.normal(size=real.shape) * real.std(axis=(0, 1)) + real.mean(axis=(0, 1))
    fn = encoder.extractor("all")
    feats = metrics.window_features(real, fn, 16)
    floor = metrics.real_floor(real, fn, 16)
    assert feats.shape == (40 * 6, 16)
    assert metrics.frechet_distance(metrics.window_features(shuffled, fn, 16), feats) > 10 * floor
    assert metrics.frechet_distance(metrics.window_features(noise, fn, 16), feats) > 10 * floor
    # the stats features cannot see the shuffle at all (same frames per window, in another order)
    np.testing.assert_allclose(
        metrics.window_features(shuffled, "stats", 96), metrics.window_features(real, "stats", 96)
    )
    stats = encoder.stats["all"]
    assert stats["final_loss"] < 0.8 * stats["chance_loss"]  # it learned more than chance


def test_compute_all_takes_the_per_subset_extractors(trained):
    encoder, rng = trained
    L = _smooth_clips(rng, 8)
    P = np.stack([_smooth_clips(rng, 2) for _ in range(4)])  # [N=4, M=2, T, 6]
    S = _smooth_clips(rng, 4)
    nb = np.eye(4, 8, dtype=bool)
    kinds = {
        "stats": "stats",
        "learned": {"all": encoder.extractor("all"), "rest": encoder.extractor("rest")},
    }
    res = metrics.compute_all(P, L, S, nb, SUBSETS, feature_kinds=kinds, window=16)
    assert "FD_learned" not in res["first"] and "FD_stats" in res["first"]  # no extractor for "first"
    for subset in ("all", "rest"):
        cols = metrics.resolve_subsets(SUBSETS, 6)[subset]
        fn = encoder.extractor(subset)
        want = metrics.frechet_distance(
            metrics.window_features(P, fn, 16, columns=cols), metrics.window_features(L, fn, 16, columns=cols)
        )
        assert res[subset]["FD_learned"] == pytest.approx(want, rel=1e-12)
        floor = metrics.real_floor(L, fn, 16, seed=0, columns=cols)
        assert res[subset]["FD_learned_real_floor"] == pytest.approx(floor, rel=1e-12)


def test_corruptions_keep_content_and_break_motion():
    g = torch.Generator().manual_seed(0)
    clips = torch.arange(2 * 40 * 3, dtype=torch.float32).reshape(2, 40, 3)
    starts = torch.tensor([0, 5])
    shuffled = corrupt("shuffled", clips, starts, 10, g)
    for b, s in enumerate(starts.tolist()):
        window = clips[b, s : s + 10]
        assert torch.equal(torch.sort(shuffled[b], dim=0).values, window)  # the same frames
        assert not torch.equal(shuffled[b], window)
        assert torch.equal(corrupt("fast", clips, starts, 10, g)[b], clips[b, s : s + 20 : 2])
    smoothed = corrupt("smoothed", clips, starts, 10, g)
    # a linear ramp is unchanged by a centred moving average away from the edges, flattened at them
    for b, s in enumerate(starts.tolist()):
        assert torch.equal(smoothed[b, 4:6], clips[b, s + 4 : s + 6])
        assert smoothed[b, 0, 0] > clips[b, s, 0]
    assert set(CORRUPTIONS) == {"shuffled", "fast", "smoothed"}
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt("reversed", clips, starts, 10, g)


def test_bad_checkpoints_and_inputs_give_clear_errors(tmp_path, trained):
    encoder, _ = trained
    missing = tmp_path / "nowhere" / "encoder.pt"
    with pytest.raises(
        ValueError, match="nowhere/encoder.pt: checkpoint not found.*dvc repro realism_encoder"
    ):
        load_encoder(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: is not a torch checkpoint.*dvc repro realism_encoder"):
        load_encoder(garbage)
    other = tmp_path / "other.pt"
    torch.save({"format": "something else"}, other)
    with pytest.raises(
        ValueError,
        match="other.pt: expected a realism encoder checkpoint .format 'reactdiff.realism_encoder/1'",
    ):
        load_encoder(other)
    with pytest.raises(ValueError, match="trained on windows of 16 frames, got 20"):
        encoder.embed(np.zeros((3, 20, 6)), "all")
    with pytest.raises(ValueError, match=r"embeds windows \[n, frames, 3\]"):
        encoder.embed(np.zeros((3, 16, 6)), "first")
    with pytest.raises(KeyError, match="no realism encoder for subset 'pose'"):
        encoder.extractor("pose")
    with pytest.raises(ValueError, match="at least 2 x window"):
        train_realism_encoder(np.zeros((4, 20, 6)), TINY, SUBSETS)


def test_embeddings_do_not_depend_on_the_batching(trained, monkeypatch):
    """embed() splits windows into batches of EMBED_BATCH (and threads): each window is embedded alone."""
    encoder, rng = trained
    windows = metrics.window_features(_smooth_clips(rng, 6), lambda w: w.reshape(len(w), -1), 16)
    windows = windows.reshape(len(windows), 16, 6)
    whole = encoder.embed(windows, "all")
    monkeypatch.setattr(realism, "EMBED_BATCH", 5)  # 36 windows: 8 batches, the last one partial
    for workers in (1, 2):
        encoder.workers = workers
        np.testing.assert_allclose(encoder.embed(windows, "all"), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoder.embed(windows[7:8], "all"), whole[7:8], rtol=1e-5, atol=1e-6)
