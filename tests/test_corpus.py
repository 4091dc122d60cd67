"""The REACT2024 reader on tiny hand-written corpora: layout semantics and every kind of bad input."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from reactdiff import layout
from reactdiff.corpus import (
    Clip,
    ClipError,
    CorpusError,
    SplitIndex,
    normalise_clip_id,
    read_clip,
    read_split,
)

SPLIT = "val"
FRAMES = 60
RATE = 16_000
SPEAKERS = [f"SiteA/sess{i}/Expert_video/1" for i in range(3)]
LISTENERS = [f"SiteA/sess{i}/Novice_video/1" for i in range(3)]
DYADS = list(zip(SPEAKERS, LISTENERS, strict=True))
# Hand-chosen neighbour matrix over the 6 doubled examples.
NEIGHBOURS = np.zeros((6, 6), dtype=bool)
NEIGHBOURS[0, [0, 4]] = True
NEIGHBOURS[1, 1] = True
NEIGHBOURS[5, [2, 3, 5]] = True


def face_values(rows: int) -> np.ndarray:
    """float32 [rows, 58]; frame t, coefficient c holds t + c / 100, so truncation is checkable exactly."""
    t = np.arange(rows, dtype=np.float32)[:, None]
    c = np.arange(layout.N_COEFFS, dtype=np.float32)[None, :]
    return t + c / 100


def emotion_values(rows: int) -> np.ndarray:
    """float64 [rows, 25] in EMOTION_COLUMNS order; column j holds j + t / 100, so order is checkable."""
    t = np.arange(rows)[:, None]
    j = np.arange(len(layout.EMOTION_COLUMNS))[None, :]
    return j + t / 100


def audio_values(frames: int, rate: int = RATE) -> np.ndarray:
    n = frames * rate // layout.FPS
    return (0.5 * np.sin(2 * np.pi * 220 * np.arange(n) / rate)).astype(np.float32)


def write_emotion(path: Path, values: np.ndarray, header: list[str] | None = layout.EMOTION_COLUMNS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [] if header is None else [",".join(header)]
    lines += [",".join(f"{v:.6f}" for v in row) for row in values]
    path.write_text("\n".join(lines) + "\n")


def write_clip(
    root: Path,
    clip_id: str,
    frames: int = FRAMES,
    face_rows: int | None = None,
    audio_frames: int | None = None,
    rate: int = RATE,
    split: str = SPLIT,
) -> None:
    """One clip in the real corpus's shapes: face ``[frames + 1, 1, 58]``, ``frames`` emotion rows."""
    face_path = layout.clip_path(root, split, "face", clip_id)
    face_path.parent.mkdir(parents=True, exist_ok=True)
    face_rows = frames + 1 if face_rows is None else face_rows
    np.save(face_path, face_values(face_rows)[:, None, :])
    write_emotion(layout.clip_path(root, split, "emotion", clip_id), emotion_values(frames))
    audio_path = layout.clip_path(root, split, "audio", clip_id)
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    audio = audio_values(frames if audio_frames is None else audio_frames, rate)
    sf.write(audio_path, audio, rate, subtype="FLOAT")


def write_split_list(
    root: Path, rows: list[tuple[str, str]], split: str = SPLIT, header: bool = True
) -> None:
    lines = [",speaker_path,listener_path"] if header else []
    lines += [f"{i},{s},{l}" for i, (s, l) in enumerate(rows)]
    layout.split_list_path(root, split).write_text("\n".join(lines) + "\n")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """3 dyads of 60-frame clips with a neighbour matrix, in the REACT2024 layout."""
    for clip in SPEAKERS + LISTENERS:
        write_clip(tmp_path, clip)
    write_split_list(tmp_path, DYADS)
    np.save(layout.neighbour_path(tmp_path, SPLIT), NEIGHBOURS)
    return tmp_path


# ----------------------------------------------------------------------------------------- read_split


def test_examples_are_the_dyads_then_the_dyads_with_roles_swapped(corpus: Path) -> None:
    index = read_split(corpus, SPLIT)
    assert isinstance(index, SplitIndex)
    assert index.dyads == DYADS
    assert len(index.examples) == 6
    for k in range(3):
        forward, swapped = index.examples[k], index.examples[k + 3]
        assert (forward.index, forward.speaker, forward.listener) == (k, SPEAKERS[k], LISTENERS[k])
        assert (swapped.index, swapped.speaker, swapped.listener) == (k + 3, LISTENERS[k], SPEAKERS[k])
        assert forward.session == swapped.session == f"SiteA/sess{k}"


def test_neighbour_matrix_and_appropriate(corpus: Path) -> None:
    index = read_split(corpus, SPLIT)
    assert index.neighbours is not None
    assert index.neighbours.dtype == np.bool_ and index.neighbours.shape == (6, 6)
    np.testing.assert_array_equal(index.neighbours, NEIGHBOURS)
    np.testing.assert_array_equal(index.appropriate(0), [0, 4])
    np.testing.assert_array_equal(index.appropriate(1), [1])
    np.testing.assert_array_equal(index.appropriate(5), [2, 3, 5])
    assert index.appropriate(2).size == 0
    with pytest.raises(IndexError):
        index.appropriate(6)


def test_integer_zero_one_neighbour_matrix_is_read_as_bool(corpus: Path) -> None:
    np.save(layout.neighbour_path(corpus, SPLIT), NEIGHBOURS.astype(np.int64))
    index = read_split(corpus, SPLIT)
    assert index.neighbours is not None and index.neighbours.dtype == np.bool_
    np.testing.assert_array_equal(index.neighbours, NEIGHBOURS)


def test_clips_and_sessions_are_unique_and_sorted(corpus: Path) -> None:
    # A clip that appears in two dyads is listed once.
    write_split_list(corpus, DYADS + [(LISTENERS[0], SPEAKERS[2])])
    layout.neighbour_path(corpus, SPLIT).unlink()
    index = read_split(corpus, SPLIT)
    assert index.clips() == sorted(SPEAKERS + LISTENERS)
    assert index.sessions() == ["SiteA/sess0", "SiteA/sess1", "SiteA/sess2"]
    assert index.examples[3 + 4].speaker == SPEAKERS[2]  # 4 dyads now: example 7 is dyad 3 swapped


def test_missing_neighbour_file_gives_none(corpus: Path) -> None:
    layout.neighbour_path(corpus, SPLIT).unlink()
    index = read_split(corpus, SPLIT)
    assert index.neighbours is None
    with pytest.raises(CorpusError, match="no neighbour matrix"):
        index.appropriate(0)


def test_clip_ids_are_normalised(corpus: Path) -> None:
    assert normalise_clip_id(" SiteA\\sess0\\Expert_video\\1.wav ") == SPEAKERS[0]
    assert normalise_clip_id("/SiteA/sess0/Expert_video/1.NPY") == SPEAKERS[0]
    assert normalise_clip_id("SiteA/sess0/Expert_video/1.mp4") == SPEAKERS[0]
    assert normalise_clip_id("SiteA/sess0/Expert_video/1") == SPEAKERS[0]
    text = (
        " , speaker_path , listener_path \n"
        f"0, SiteA\\sess0\\Expert_video\\1.wav ,{LISTENERS[0]}.npy\n"
        f"1,{SPEAKERS[1]}.csv,  SiteA\\sess1\\Novice_video\\1  \n"
        "\n"
        f"2,{SPEAKERS[2]}.mp4,{LISTENERS[2]}\n"
    )
    layout.split_list_path(corpus, SPLIT).write_text(text)
    assert read_split(corpus, SPLIT).dyads == DYADS
    clip = read_clip(corpus, SPLIT, " SiteA\\sess0\\Expert_video\\1.wav")
    assert clip.clip_id == SPEAKERS[0]


def test_split_list_without_header_keeps_its_first_dyad(corpus: Path) -> None:
    write_split_list(corpus, DYADS, header=False)
    assert read_split(corpus, SPLIT).dyads == DYADS


def test_missing_split_list_is_a_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError) as info:
        read_split(tmp_path, "test")
    message = str(info.value)
    assert str(layout.split_list_path(tmp_path, "test")) in message
    assert "dvc repro make_sample" in message and "data.root" in message
    assert info.value.path == layout.split_list_path(tmp_path, "test")


def test_missing_root_is_a_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read_split(tmp_path / "nowhere", SPLIT)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (",speaker_path,listener_path\n", "has no dyads"),
        ("", "has no dyads"),
        (f",speaker_path,listener_path\n0,{SPEAKERS[0]}\n", "line 2: expected '<index>"),
        (f",speaker_path,listener_path\n0,{SPEAKERS[0]};{LISTENERS[0]}\n", "found 2 column"),
        (f",speaker_path,listener_path\n0,SiteA/s0/1,{LISTENERS[0]}\n", "'SiteA/s0/1' is not a clip id"),
        (f",speaker_path,listener_path\n0,{SPEAKERS[0]},\n", "line 2: '' is not a clip id"),
    ],
)
def test_malformed_split_list_is_a_corpus_error(corpus: Path, text: str, reason: str) -> None:
    path = layout.split_list_path(corpus, SPLIT)
    path.write_text(text)
    with pytest.raises(CorpusError) as info:
        read_split(corpus, SPLIT)
    assert str(path) in str(info.value)
    assert reason in str(info.value)


@pytest.mark.parametrize(
    ("matrix", "reason"),
    [
        (np.ones((3, 3), dtype=bool), "shape (3, 3), expected (6, 6)"),
        (np.ones((6, 5), dtype=bool), "shape (6, 5)"),
        (np.ones((6, 6, 1), dtype=bool), "shape (6, 6, 1)"),
        (np.full((6, 6), 0.5), "values other than 0 and 1"),
        (np.full((6, 6), "x"), "dtype <U1, expected bool"),
    ],
)
def test_bad_neighbour_matrix_is_a_corpus_error(corpus: Path, matrix: np.ndarray, reason: str) -> None:
    path = layout.neighbour_path(corpus, SPLIT)
    np.save(path, matrix)
    with pytest.raises(CorpusError) as info:
        read_split(corpus, SPLIT)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_unreadable_neighbour_matrix_is_a_corpus_error(corpus: Path) -> None:
    path = layout.neighbour_path(corpus, SPLIT)
    path.write_bytes(b"not an npy file")
    with pytest.raises(CorpusError, match="cannot read the neighbour matrix"):
        read_split(corpus, SPLIT)


# ------------------------------------------------------------------------------------------ read_clip


def test_read_clip_squeezes_truncates_and_aligns(corpus: Path) -> None:
    clip = read_clip(corpus, SPLIT, SPEAKERS[1])
    assert isinstance(clip, Clip)
    # The face file is [61, 1, 58]; emotion and audio have 60 frames: the 1-frame gap is normal.
    assert clip.n_frames == FRAMES and clip.audio_rate == RATE
    assert clip.face.dtype == clip.audio.dtype == clip.emotion.dtype == np.float32
    np.testing.assert_array_equal(clip.face, face_values(FRAMES))
    np.testing.assert_allclose(clip.emotion, emotion_values(FRAMES), atol=1e-6)
    assert clip.audio.shape == (FRAMES * RATE // layout.FPS,)
    np.testing.assert_allclose(clip.audio, audio_values(FRAMES), atol=1e-6)


def test_real_corpus_lengths_751_face_rows_against_750_frames(tmp_path: Path) -> None:
    clip_id = SPEAKERS[0]
    write_clip(tmp_path, clip_id, frames=layout.CLIP_FRAMES, rate=layout.CORPUS_SAMPLE_RATE)
    assert np.load(layout.clip_path(tmp_path, SPLIT, "face", clip_id)).shape == (751, 1, 58)
    clip = read_clip(tmp_path, SPLIT, clip_id, audio_rate=layout.CORPUS_SAMPLE_RATE)
    assert clip.n_frames == layout.CLIP_FRAMES
    assert clip.face.shape == (750, 58) and clip.emotion.shape == (750, 25)
    assert clip.audio.shape == (750 * 1764,)
    np.testing.assert_array_equal(clip.face, face_values(750))


def test_max_frames_caps_every_modality(corpus: Path) -> None:
    clip = read_clip(corpus, SPLIT, SPEAKERS[0], max_frames=50)
    assert clip.n_frames == 50
    assert clip.face.shape == (50, 58) and clip.emotion.shape == (50, 25)
    assert clip.audio.shape == (50 * 640,)
    np.testing.assert_allclose(clip.audio, audio_values(FRAMES)[: 50 * 640], atol=1e-6)


def test_audio_rate_sets_the_audio_cut(corpus: Path) -> None:
    # 16 kHz audio asked for at 8 kHz: 60 frames x 320 samples.
    clip = read_clip(corpus, SPLIT, SPEAKERS[0], audio_rate=8_000)
    assert clip.n_frames == FRAMES and clip.audio.shape == (FRAMES * 320,)


def test_video_is_optional_and_ignored(corpus: Path) -> None:
    video = layout.clip_path(corpus, SPLIT, "video", SPEAKERS[0])
    assert not video.exists()
    read_clip(corpus, SPLIT, SPEAKERS[0])
    video.parent.mkdir(parents=True)
    video.write_bytes(b"not a video")
    assert read_clip(corpus, SPLIT, SPEAKERS[0]).n_frames == FRAMES


def test_emotion_without_header_or_with_shuffled_lowercase_header(corpus: Path) -> None:
    path = layout.clip_path(corpus, SPLIT, "emotion", SPEAKERS[0])
    write_emotion(path, emotion_values(FRAMES), header=None)
    np.testing.assert_allclose(read_clip(corpus, SPLIT, SPEAKERS[0]).emotion, EMOTION, atol=1e-6)

    order = np.random.default_rng(0).permutation(len(layout.EMOTION_COLUMNS))
    header = [layout.EMOTION_COLUMNS[j].lower() for j in order]
    write_emotion(path, emotion_values(FRAMES)[:, order], header=header)
    # Read back in EMOTION_COLUMNS order whatever the file's column order.
    np.testing.assert_allclose(read_clip(corpus, SPLIT, SPEAKERS[0]).emotion, EMOTION, atol=1e-6)


def test_gap_within_tolerance_is_accepted_and_beyond_is_rejected(corpus: Path) -> None:
    emotion_path = layout.clip_path(corpus, SPLIT, "emotion", SPEAKERS[0])
    write_emotion(emotion_path, emotion_values(FRAMES - 3))  # face 61, emotion 57, audio 60 rows
    with pytest.raises(ClipError) as info:
        read_clip(corpus, SPLIT, SPEAKERS[0])
    assert info.value.path == emotion_path
    assert "emotion has 57 frames but face has 61" in str(info.value)
    assert "face 61, emotion 57, audio 60" in info.value.reason

    clip = read_clip(corpus, SPLIT, SPEAKERS[0], frame_tolerance=4)
    assert clip.n_frames == 57 and clip.audio.shape == (57 * 640,)


def test_short_audio_is_a_clip_error(tmp_path: Path) -> None:
    write_clip(tmp_path, SPEAKERS[0], audio_frames=40)
    audio_path = layout.clip_path(tmp_path, SPLIT, "audio", SPEAKERS[0])
    with pytest.raises(ClipError) as info:
        read_clip(tmp_path, SPLIT, SPEAKERS[0])
    assert info.value.path == audio_path
    assert "audio is shorter than it should be: 25600 samples at 16000 Hz = 40 frames" in info.value.reason


def test_a_clip_without_a_full_frame_is_rejected(tmp_path: Path) -> None:
    # face 0 rows, emotion 1 row, audio half a frame: within tolerance, but nothing to use.
    write_clip(tmp_path, SPEAKERS[0], frames=1, face_rows=0)
    sf.write(layout.clip_path(tmp_path, SPLIT, "audio", SPEAKERS[0]), audio_values(1)[:320], RATE)
    with pytest.raises(ClipError, match="0 usable frames"):
        read_clip(tmp_path, SPLIT, SPEAKERS[0])


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, array)


def _face_nan(path: Path) -> None:
    face = face_values(FRAMES + 1)
    face[7, 3] = np.nan
    np.save(path, face)


def _face_inf(path: Path) -> None:
    face = face_values(FRAMES + 1)[:, None, :]
    face[9, 0, 57] = -np.inf
    np.save(path, face)


def _emotion_cell(value: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        lines = path.read_text().splitlines()
        cells = lines[4].split(",")
        cells[2] = value
        lines[4] = ",".join(cells)
        path.write_text("\n".join(lines) + "\n")

    return edit


EMOTION = emotion_values(FRAMES)
# (modality whose file is broken, how, expected fragment of the reason)
BAD_CLIPS = [
    ("audio", lambda p: p.unlink(), "missing audio file"),
    ("face", lambda p: p.unlink(), "missing face file"),
    ("emotion", lambda p: p.unlink(), "missing emotion file"),
    ("face", lambda p: p.write_bytes(b"\x00garbage"), "unreadable 3DMM .npy file"),
    ("face", lambda p: np.save(p, np.array([{"a": 1}]), allow_pickle=True), "unreadable 3DMM .npy file"),
    ("face", lambda p: _save(p, face_values(FRAMES + 1).reshape(FRAMES + 1, 2, 29)), "expected [frames, 58]"),
    ("face", lambda p: _save(p, face_values(FRAMES + 1).ravel()), "expected [frames, 58]"),
    ("face", lambda p: _save(p, face_values(FRAMES + 1)[:, :57]), "57 coefficients per frame"),
    ("face", lambda p: _save(p, np.full((FRAMES, 58), "x")), "dtype <U1, expected float"),
    (
        "face",
        _face_nan,
        "1 NaN/inf value(s) (or values beyond float32 range) in 1 frame(s), first at frame 7",
    ),
    ("face", _face_inf, "first at frame 9"),
    ("emotion", lambda p: write_emotion(p, EMOTION[:, :24], header=None), "24 column(s)"),
    (
        "emotion",
        lambda p: write_emotion(p, EMOTION[:, :24], header=layout.EMOTION_COLUMNS[:24]),
        "the 25 columns",
    ),
    ("emotion", lambda p: write_emotion(p, EMOTION, header=[f"c{j}" for j in range(25)]), "the 25 columns"),
    ("emotion", _emotion_cell("abc"), "line 5, column 3 holds 'abc', which is not a number"),
    ("emotion", _emotion_cell(""), "line 5, column 3 holds '', which is not a number"),
    ("emotion", _emotion_cell("nan"), "1 NaN/inf value(s), first on line 5, column 3"),
    ("emotion", lambda p: p.write_text(""), "emotion csv is empty"),
    ("emotion", lambda p: write_emotion(p, emotion_values(0)), "has a header but no frames"),
    ("emotion", lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "unreadable emotion csv"),
    ("audio", lambda p: p.write_bytes(b"RIFF not really a wav"), "re-export the audio"),
]


@pytest.mark.parametrize(("modality", "damage", "reason"), BAD_CLIPS)
def test_bad_clip_raises_clip_error_naming_the_file_and_the_fix(
    corpus: Path, modality: str, damage: Callable[[Path], None], reason: str
) -> None:
    path = layout.clip_path(corpus, SPLIT, modality, SPEAKERS[2])
    damage(path)
    with pytest.raises(ClipError) as info:
        read_clip(corpus, SPLIT, SPEAKERS[2])
    error = info.value
    assert error.clip_id == SPEAKERS[2] and error.path == path
    assert str(error) == f"{path}: {error.reason}"
    assert reason in error.reason
    # Always says what to do: fix the file or drop the clip's dyads from the split list.
    split_list = layout.split_list_path(corpus, SPLIT)
    assert f"remove the dyads that use {SPEAKERS[2]} from {split_list}" in error.reason
    # The other clips are unaffected.
    assert read_clip(corpus, SPLIT, SPEAKERS[1]).n_frames == FRAMES


def test_undecodable_audio_keeps_the_decoder_reason(corpus: Path) -> None:
    from reactdiff.audio import AudioError

    path = layout.clip_path(corpus, SPLIT, "audio", SPEAKERS[0])
    sf.write(path, np.zeros(0, dtype=np.float32), RATE)  # a valid wav header with no samples
    with pytest.raises(ClipError) as info:
        read_clip(corpus, SPLIT, SPEAKERS[0])
    cause = info.value.__cause__
    assert isinstance(cause, AudioError) and cause.path == path
    assert info.value.path == path and info.value.reason.startswith(cause.reason)


def test_errors_survive_pickling_for_process_pools(tmp_path: Path) -> None:
    clip_error = ClipError("a/b/c/d", tmp_path / "x.npy", "bad")
    back = pickle.loads(pickle.dumps(clip_error))
    assert (back.clip_id, back.path, back.reason) == ("a/b/c/d", tmp_path / "x.npy", "bad")
    assert str(back) == str(clip_error) == f"{tmp_path / 'x.npy'}: bad"
    corpus_error = CorpusError("broken split", tmp_path / "val.csv")
    back = pickle.loads(pickle.dumps(corpus_error))
    assert (str(back), back.path) == ("broken split", tmp_path / "val.csv")


def test_invalid_arguments(corpus: Path) -> None:
    for kwargs in ({"audio_rate": 0}, {"max_frames": 0}, {"frame_tolerance": -1}):
        with pytest.raises(ValueError):
            read_clip(corpus, SPLIT, SPEAKERS[0], **kwargs)
