from pathlib import Path

import numpy as np
import pytest

from reactdiff import atomic
from reactdiff.corpus import Example, SplitIndex
from reactdiff.features import (
    EXAMPLES_FILE,
    FRAMES_FILE,
    ClipFeatures,
    NormStats,
    examples_table,
    frames_table,
)
from reactdiff.noise import SIGMA_DATA
from reactdiff.windows import WindowDataset, build_split_windows, window_starts, write_split_windows

A = 3  # audio feature size in these tests


def _clip(clip_id: str, n: int, offset: float) -> ClipFeatures:
    # Each value encodes (clip, frame, dim) so every gathered frame can be checked by hand.
    frames = np.arange(n, dtype=np.float32)[:, None]
    face = offset + frames + np.arange(58, dtype=np.float32)[None] / 100
    audio = -offset - frames - np.arange(A, dtype=np.float32)[None] / 100
    return ClipFeatures(clip_id, face, audio, np.zeros((n, 25), np.float32))


@pytest.fixture
def features_dir(tmp_path):
    a, b = "S/s1/P1/1", "S/s1/P2/1"
    c, d = "S/s2/P1/1", "S/s2/P2/1"
    clips = [_clip(a, 40, 1000), _clip(b, 41, 2000), _clip(c, 20, 3000)]  # d was quarantined
    examples = [
        Example(0, a, b, "S/s1"),
        Example(1, c, d, "S/s2"),
        Example(2, b, a, "S/s1"),
        Example(3, d, c, "S/s2"),
    ]
    index = SplitIndex(tmp_path, "train", [(a, b), (c, d)], examples, None)
    split_dir = tmp_path / "features" / "train"
    atomic.write_parquet(frames_table(clips, "test", A), split_dir / FRAMES_FILE)
    atomic.write_parquet(examples_table(index, {a, b, c}, {d: "bad npy"}), split_dir / EXAMPLES_FILE)
    return split_dir


def test_window_starts_cover_every_frame():
    assert window_starts(40, 16, 4).tolist() == [0, 4, 8, 12, 16, 20, 24]
    assert window_starts(41, 16, 16).tolist() == [0, 16, 25]  # last window aligned to the end
    assert window_starts(15, 16, 4).tolist() == []
    for n, w, stride in [(750, 16, 16), (750, 16, 4), (100, 7, 5)]:
        covered = np.zeros(n, bool)
        for s in window_starts(n, w, stride):
            covered[s : s + w] = True
        assert covered.all()


@pytest.mark.parametrize("initial_past", ["first_frame", "mean"])
def test_windows_gather_the_right_frames(features_dir, tmp_path, initial_past):
    # face std = SIGMA_DATA makes the normalisation the identity, so values can be checked by hand.
    face_std = np.full(58, SIGMA_DATA, np.float32)
    stats = NormStats(np.zeros(58, np.float32), face_std, np.zeros(A, np.float32), np.ones(A, np.float32))
    w = 16
    built = build_split_windows(features_dir, stats, w=w, stride=4)
    assert built.meta["examples"] == 2  # only the (a, b) dyad is usable, in both directions
    write_split_windows(built, tmp_path / "windows" / "train")
    ds = WindowDataset(tmp_path / "windows" / "train", initial_past=initial_past)
    assert not ds.listener.flags.owndata  # a view into the memory-mapped file, not a copy
    assert len(ds) == 2 * len(window_starts(40, w, 4))
    batch = ds.batch(np.arange(len(ds)))
    for i in range(len(ds)):
        h = int(batch.frame_index[i])
        start = h - w + 1
        speaker_offset, listener_offset = (1000, 2000) if batch.example[i] == 0 else (2000, 1000)
        frames = np.arange(start, h + 1)
        assert np.allclose(batch.listener[i, :, 0], listener_offset + frames)
        assert np.allclose(batch.speaker_face[i, :, 5], speaker_offset + frames + 0.05)
        assert np.allclose(batch.speaker_audio[i, :, 1], -speaker_offset - frames - 0.01)
        past_frames = frames - w
        expected_past = np.where(
            past_frames >= 0,
            listener_offset + past_frames,
            listener_offset if initial_past == "first_frame" else 0.0,
        )
        assert np.allclose(batch.past[i, :, 0], expected_past)
        # Causality of the training example: nothing after the window's last frame is in it.
        assert batch.speaker_face[i, :, 0].max() <= speaker_offset + h


def _scaled_windows(features_dir: Path, out: Path, w: int, speaker_history: int = 0) -> WindowDataset:
    """Windows (stride 4) whose normalisation only rescales the face by ``SIGMA_DATA``."""
    face_std = np.full(58, SIGMA_DATA, np.float32)
    stats = NormStats(np.zeros(58, np.float32), face_std, np.zeros(A, np.float32), np.ones(A, np.float32))
    write_split_windows(build_split_windows(features_dir, stats, w=w, stride=4), out)
    return WindowDataset(out, speaker_history=speaker_history)


def test_speaker_history_prepends_the_frames_before_the_window(features_dir, tmp_path):
    w, history = 16, 10
    ds = _scaled_windows(features_dir, tmp_path / "w" / "train", w, speaker_history=history)
    batch = ds.batch(np.arange(len(ds)))
    assert batch.speaker_face.shape == (len(ds), history + w, 58)
    assert batch.speaker_audio.shape == (len(ds), history + w, A)
    for i in range(len(ds)):
        h = int(batch.frame_index[i])
        speaker_offset = 1000 if batch.example[i] == 0 else 2000
        # Frames h - w - history + 1 .. h; those before the conversation are its first frame (0).
        frames = np.maximum(np.arange(h - w - history + 1, h + 1), 0)
        assert np.allclose(batch.speaker_face[i, :, 5], speaker_offset + frames + 0.05)
        assert np.allclose(batch.speaker_audio[i, :, 1], -speaker_offset - frames - 0.01)
    with pytest.raises(ValueError, match="speaker_history must be >= 0"):
        WindowDataset(tmp_path / "w" / "train", speaker_history=-1)


def test_previous_window_is_the_window_w_frames_earlier(features_dir, tmp_path):
    w = 16
    ds = _scaled_windows(features_dir, tmp_path / "w" / "train", w, speaker_history=6)
    everything = np.arange(len(ds))
    has = ds.has_previous(everything)
    assert has.any() and not has.all()  # the first windows of each conversation have none
    assert np.array_equal(has, ds.start_row - w >= ds.first_row)
    earlier = ds.batch(everything[has], windows_back=1)
    # The window w frames earlier is itself a training window (stride divides w): every field matches it.
    by_start = {int(s): i for i, s in enumerate(ds.start_row)}
    same = ds.batch(np.array([by_start[int(s) - w] for s in ds.start_row[has]]))
    for field in ("listener", "past", "speaker_face", "speaker_audio", "frame_index", "example"):
        assert np.array_equal(getattr(earlier, field), getattr(same, field)), field
    assert np.array_equal(earlier.listener, ds.batch(everything[has]).past)
    with pytest.raises(ValueError, match="starts before its conversation"):
        ds.batch(everything[~has][:1], windows_back=1)


def test_history_is_the_listeners_mean_before_the_window(features_dir, tmp_path):
    ds = _scaled_windows(features_dir, tmp_path / "w" / "train", 16)
    batch = ds.batch(np.arange(len(ds)))
    for i in range(len(ds)):
        first, start = ds.first_row[i], ds.start_row[i]
        # By hand: the listener frames from the conversation's first row up to the window's start.
        want = ds.listener[first:start].mean(axis=0) if start > first else batch.past[i].mean(axis=0)
        np.testing.assert_allclose(batch.history[i], want, rtol=1e-5, atol=1e-5)
    assert (ds.start_row > ds.first_row).any() and (ds.start_row == ds.first_row).any()


def test_windows_are_normalised_with_train_stats(features_dir):
    stats = NormStats(
        np.full(58, 1000, np.float32),
        np.full(58, 2, np.float32),
        np.zeros(A, np.float32),
        np.full(A, 4, np.float32),
    )
    built = build_split_windows(features_dir, stats, w=8, stride=8)
    listener = built.sequences.column("listener").combine_chunks().flatten().to_numpy().reshape(-1, 58)
    assert np.allclose(
        listener[0, 0], (2000 - 1000) / 2 * SIGMA_DATA
    )  # example 0's listener: clip b, frame 0
