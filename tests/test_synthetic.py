"""The synthetic corpus: REACT2024 layout, determinism, and the measured properties of its content."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from reactdiff import layout, reference
from reactdiff import synthetic as syn

SPEC = syn.SyntheticSpec(
    seed=3, frames=250, sample_rate=16_000, families={"train": 2, "val": 1, "test": 1}, sessions_per_family=3
)
N = SPEC.frames + 1
SPF = SPEC.sample_rate // layout.FPS
IDX = {name: i for i, name in enumerate(reference.expression_names())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "corpus"
    summary = syn.generate_corpus(root, SPEC)
    assert summary["splits"]["train"]["dyads"] == 6
    return root


@pytest.fixture(scope="module")
def sessions(corpus: Path) -> list[dict]:
    """Per session: ground truth from the meta file plus both persons' faces and audio as written."""
    meta = syn.load_meta(corpus)
    out = []
    for split, records in meta["splits"].items():
        for rec in records:
            faces = [np.load(layout.clip_path(corpus, split, "face", c)) for c in rec["clips"]]
            audio = [sf.read(layout.clip_path(corpus, split, "audio", c))[0] for c in rec["clips"]]
            out.append({**rec, "split": split, "faces": faces, "audio": audio})
    return out


def _mask(intervals: list[list[int]] | list[tuple[int, int]], n: int = N) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for start, end in intervals:
        m[start:end] = True
    return m


def _turn_mask(session: dict, person: int) -> np.ndarray:
    return _mask([(s, e) for p, s, e in session["turns"] if p == person])


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------------


def test_every_listed_clip_has_its_files_with_real_shapes(corpus: Path) -> None:
    for split, n_families in SPEC.families.items():
        table = pd.read_csv(layout.split_list_path(corpus, split))
        assert list(table.columns) == ["id", "speaker_path", "listener_path"]
        assert len(table) == n_families * SPEC.sessions_per_family
        assert table["id"].tolist() == list(range(len(table)))
        for clip in pd.concat([table["speaker_path"], table["listener_path"]]):
            site, session, person, name = clip.split("/")
            assert site in ("NoXI", "RECOLA") and name == "1"
            assert person in (("Expert_video", "Novice_video") if site == "NoXI" else ("P1", "P2"))
            face = np.load(layout.clip_path(corpus, split, "face", clip))
            assert face.shape == (N, layout.N_COEFFS) and face.dtype == np.float32
            emotion = pd.read_csv(layout.clip_path(corpus, split, "emotion", clip))
            assert list(emotion.columns) == layout.EMOTION_COLUMNS and len(emotion) == N
            info = sf.info(str(layout.clip_path(corpus, split, "audio", clip)))
            assert (info.samplerate, info.channels, info.subtype) == (SPEC.sample_rate, 1, "PCM_16")
            assert info.frames == N * SPF
    assert not list(corpus.rglob("*.tmp")), "atomic writes left temporary files behind"
    assert not (corpus / "train" / "Video_files").exists()


def test_neighbour_matrix_is_same_family_and_same_role(corpus: Path) -> None:
    meta = syn.load_meta(corpus)
    for split in SPEC.families:
        matrix = np.load(layout.neighbour_path(corpus, split))
        rows = len(meta["splits"][split])
        assert matrix.shape == (2 * rows, 2 * rows) and matrix.dtype == np.bool_
        assert matrix.diagonal().all()
        assert (matrix.sum(axis=1) >= SPEC.sessions_per_family).all()
        family = np.array([rec["family"] for rec in meta["splits"][split]] * 2)
        role = np.repeat([0, 1], rows)
        expected = (family[:, None] == family[None, :]) & (role[:, None] == role[None, :])
        np.testing.assert_array_equal(matrix, expected)


def test_project_reader_accepts_the_corpus(corpus: Path) -> None:
    corpus_module = pytest.importorskip("reactdiff.corpus")
    index = corpus_module.read_split(corpus, "train")
    assert len(index.examples) == 2 * 6
    assert index.appropriate(0).tolist() == [0, 1, 2]  # family 0, role A->B: its own 3 sessions


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_spec_gives_identical_bytes_in_any_process_and_seed_changes_content(
    corpus: Path, tmp_path: Path
) -> None:
    syn.generate_corpus(tmp_path / "again", SPEC, workers=2)
    assert _hashes(tmp_path / "again") == _hashes(corpus)

    other = syn.SyntheticSpec(**{**SPEC.__dict__, "seed": SPEC.seed + 1})
    syn.generate_corpus(tmp_path / "other", other)
    first = {h for name, h in _hashes(corpus).items() if name.endswith(".npy") and "/" in name}
    second = {h for name, h in _hashes(tmp_path / "other").items() if name.endswith(".npy") and "/" in name}
    assert first and not first & second


# --------------------------------------------------------------------------------------------------
# Coefficient ranges, smoothness and facial action unit dependencies
# --------------------------------------------------------------------------------------------------


def test_coefficients_have_real_ranges_and_smooth_motion(sessions: list[dict]) -> None:
    faces = [f.astype(np.float64) for s in sessions for f in s["faces"]]
    stacked = np.concatenate(faces)
    assert stacked[:, layout.EXPRESSION].min() >= 0.0 and stacked[:, layout.EXPRESSION].max() <= 1.0
    mean, std = reference.coefficient_stats()
    z = np.abs(stacked.mean(axis=0) - mean) / std
    assert z.max() < 2.0, f"dimension {int(z.argmax())} mean is {z.max():.2f} real stds off"

    lag1, rel_speed = [], []
    for face in faces:
        x = face - face.mean(axis=0)
        sd = x.std(axis=0)
        active = np.where(layout.POSE.start <= np.arange(58), sd > 1e-3, sd > 0.01)
        r = (x[1:] * x[:-1]).mean(axis=0) / np.maximum(x.var(axis=0), 1e-12)
        lag1.append(np.where(active, r, np.nan))
        rel_speed.append(
            np.where(active, np.abs(np.diff(face, axis=0)).mean(axis=0) / np.maximum(sd, 1e-12), np.nan)
        )
    lag1 = np.array(lag1)
    lag1 = lag1[:, ~np.isnan(lag1).all(axis=0)]  # dimensions never active (e.g. mouthPucker) drop out
    assert lag1.shape[1] >= 40
    assert np.nanmin(np.nanmedian(lag1, axis=0)) > 0.9  # every dimension, in a typical clip
    assert np.nanpercentile(lag1, 1) > 0.9  # and nearly every (clip, dimension) series
    # A clip whose only motion in a dimension is one fast event (a blink at the very end) can dip
    # lower, but nothing is anywhere near white noise (lag-1 autocorrelation ~0).
    assert np.nanmin(lag1) > 0.7
    # White noise would move ~1.1 std per frame; human-like motion moves a small fraction of it.
    assert np.nanmedian(np.array(rel_speed)) < 0.2


def test_head_nods_are_pitch_oscillations_of_one_to_two_hertz() -> None:
    # Style changes no random draw, so the same listener as "warm" (nods often) minus as "sceptical"
    # (rarely) leaves the nods alone, without the drift: their spectrum sits in the 1-2 Hz band.
    warm, sceptical = syn.STYLE_NAMES.index("warm"), syn.STYLE_NAMES.index("sceptical")
    spectra = []
    for family in range(2):
        for k in range(SPEC.sessions_per_family):
            pitch = [
                syn.simulate_session(SPEC, "train", family, k, styles=(0, st)).coefficients[1][:, 52]
                for st in (warm, sceptical)
            ]
            nods = (pitch[0] - pitch[1]).astype(np.float64)
            assert 0.01 < np.abs(nods).max() < 0.2  # a few degrees
            spectra.append(np.abs(np.fft.rfft(nods * np.hanning(N))) ** 2)
    power = np.mean(spectra, axis=0)
    freqs = np.fft.rfftfreq(N, d=1 / layout.FPS)
    band = (freqs >= 0.8) & (freqs <= 2.5)
    assert 0.8 <= freqs[np.argmax(power)] <= 2.5
    assert power[band].sum() > 0.5 * power.sum()


def _pearson_over_active(sessions: list[dict], i: int, j: int) -> float:
    rs = []
    for s in sessions:
        for face in s["faces"]:
            a, b = face[:, i].astype(np.float64), face[:, j].astype(np.float64)
            if a.std() > 0.01 and b.std() > 0.01:
                rs.append(np.corrcoef(a, b)[0, 1])
    return float(np.mean(rs)) if rs else float("nan")


def test_au_dependencies_hold(sessions: list[dict]) -> None:
    pairs = {kind: p.tolist() for kind, p in reference.au_pairs().items()}
    symmetric = {(i, j): _pearson_over_active(sessions, i, j) for i, j in pairs["symmetric"]}
    measured = {k: r for k, r in symmetric.items() if not np.isnan(r)}
    assert len(measured) >= 15, "most symmetric pairs should be active"
    assert min(measured.values()) > 0.8, {k: round(r, 2) for k, r in measured.items() if r <= 0.8}

    co = [_pearson_over_active(sessions, i, j) for i, j in pairs["co_occurring"]]
    assert np.nanmean(co) > 0.3

    expression = np.concatenate([f[:, layout.EXPRESSION] for s in sessions for f in s["faces"]])
    both = [
        ((expression[:, i] > 0.3) & (expression[:, j] > 0.3)).mean() for i, j in pairs["mutually_exclusive"]
    ]
    assert max(both) < 0.02


def test_enforce_exclusive_caps_the_weaker_of_a_pair() -> None:
    x = np.full((3, 52), 0.1)
    i, j = IDX["browDownLeft"], IDX["browOuterUpLeft"]  # a mutually exclusive pair
    x[0, [i, j]] = 0.6, 0.4  # both active: the weaker is capped
    x[1, [i, j]] = 0.35, 0.8
    x[2, [i, j]] = 0.9, 0.2  # only one active: untouched
    out = syn.enforce_exclusive(x)
    assert out[0, i] == 0.6 and out[0, j] == pytest.approx(0.95 * syn.ACTIVE_LEVEL)
    assert out[1, j] == 0.8 and out[1, i] == pytest.approx(0.95 * syn.ACTIVE_LEVEL)
    np.testing.assert_array_equal(out[2], x[2])


# --------------------------------------------------------------------------------------------------
# Reactions: delay, one-to-many, voice
# --------------------------------------------------------------------------------------------------


def _speaker_summary(face: np.ndarray) -> np.ndarray:
    cols = [
        IDX[n]
        for n in ("mouthSmileLeft", "mouthSmileRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight")
    ]
    return face[:, cols].astype(np.float64).sum(axis=1)


def test_listener_reacts_to_the_speaker_after_a_human_delay(sessions: list[dict]) -> None:
    # Pearson between the speaker's expressive summary at t (while speaking) and the listener's
    # expression activity at t + lag (while listening), averaged over every example of the corpus.
    lags = np.arange(-30, 41)
    curves = []
    for s in sessions:
        for speaker in (0, 1):
            listener = 1 - speaker
            speaking, listening = _turn_mask(s, speaker), ~_turn_mask(s, listener)
            x = _speaker_summary(s["faces"][speaker])
            face = s["faces"][listener][:, layout.EXPRESSION].astype(np.float64)
            y = np.abs(face - np.median(face[listening], axis=0)).sum(axis=1)
            curve = []
            for lag in lags:
                t = np.arange(max(0, -lag), min(N, N - lag))
                keep = speaking[t] & listening[t + lag]
                ok = keep.sum() >= 30 and x[t[keep]].std() > 0 and y[t[keep] + lag].std() > 0
                curve.append(np.corrcoef(x[t[keep]], y[t[keep] + lag])[0, 1] if ok else np.nan)
            curves.append(curve)
    mean_curve = np.nanmean(np.array(curves), axis=0)
    peak = int(lags[np.nanargmax(mean_curve)])
    assert 4 <= peak <= 25
    assert mean_curve.max() > mean_curve[lags == 0][0] + 0.15
    assert mean_curve.max() > np.nanmax(mean_curve[lags < 0]) + 0.15


def test_listener_nods_after_the_speakers_phrases_end(sessions: list[dict]) -> None:
    # Voice-driven reaction: warm listeners' head pitch moves most 0.3-1.5 s after a phrase ends.
    after, baseline = [], []
    for s in sessions:
        for listener in (0, 1):
            if s["styles"][listener] != "warm":
                continue
            pitch = s["faces"][listener][:, 52].astype(np.float64)
            speed = np.abs(np.diff(pitch, prepend=pitch[:1]))
            listening = ~_turn_mask(s, listener)
            window = np.zeros(N, dtype=bool)
            for _, end in s["utterances"][1 - listener]:
                window[end + 8 : end + 38] = True
            after.append(speed[window & listening].mean())
            baseline.append(speed[~window & listening].mean())
    assert after, "the test corpus holds no warm listener: pick a seed of the fixture's spec that has one"
    assert np.mean(after) > 1.5 * np.mean(baseline)


def test_one_speaker_context_has_many_different_appropriate_reactions(sessions: list[dict]) -> None:
    by_family: dict[tuple[str, int], list[dict]] = {}
    for s in sessions:
        by_family.setdefault((s["split"], s["family"]), []).append(s)
    found = 0
    for members in by_family.values():
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                s1, s2 = members[a], members[b]
                if s1["styles"][1] == s2["styles"][1]:
                    continue
                # Role A -> B: compare while A speaks in both sessions.
                m = _turn_mask(s1, 0) & _turn_mask(s2, 0)
                speaker = np.abs(s1["faces"][0][m, :52] - s2["faces"][0][m, :52]).mean()
                listener = np.abs(s1["faces"][1][m, :52] - s2["faces"][1][m, :52]).mean()
                assert listener > 1.5 * speaker
                found += 1
    assert found > 0, "the corpus should hold a family whose listeners differ in style"


def test_reactions_differ_by_style_far_more_than_by_session() -> None:
    # Controlled: the same two sessions of one family with forced styles for the listener B.
    diffs = {"same": [], "different": []}
    for family in range(2):
        base = [syn.simulate_session(SPEC, "train", family, k, styles=(0, 0)) for k in (0, 1)]
        m = _turn_mask({"turns": base[0].turns}, 0)
        faces = {
            (k, st): syn.simulate_session(SPEC, "train", family, k, styles=(0, st)).coefficients[1][m, :52]
            for k in (0, 1)
            for st in range(len(syn.STYLES))
        }
        for st in range(len(syn.STYLES)):
            diffs["same"].append(np.abs(faces[0, st] - faces[1, st]).mean())
            for other in range(len(syn.STYLES)):
                if other != st:
                    diffs["different"].append(np.abs(faces[0, st] - faces[1, other]).mean())
        speaker = np.abs(base[0].coefficients[0][m, :52] - base[1].coefficients[0][m, :52]).mean()
        assert speaker < 0.5 * np.mean(diffs["different"])
    assert np.mean(diffs["different"]) > 2.0 * np.mean(diffs["same"])
    assert min(diffs["different"]) > 1.2 * np.mean(diffs["same"])


def test_forcing_styles_changes_only_the_styled_person() -> None:
    drawn = syn.simulate_session(SPEC, "val", 0, 1)
    styles = tuple(syn.STYLE_NAMES.index(name) for name in drawn.styles)
    again = syn.simulate_session(SPEC, "val", 0, 1, styles=styles)
    for p in (0, 1):
        np.testing.assert_array_equal(drawn.coefficients[p], again.coefficients[p])
        np.testing.assert_array_equal(drawn.audio[p], again.audio[p])
    restyled = syn.simulate_session(SPEC, "val", 0, 1, styles=(styles[0], (styles[1] + 1) % len(syn.STYLES)))
    np.testing.assert_array_equal(drawn.coefficients[0], restyled.coefficients[0])
    np.testing.assert_array_equal(drawn.audio[1], restyled.audio[1])
    assert not np.array_equal(drawn.coefficients[1], restyled.coefficients[1])


def test_voice_is_loud_while_speaking_and_moves_the_jaw(sessions: list[dict]) -> None:
    ratios, corrs, pitches = [], [], []
    for s in sessions:
        for person in (0, 1):
            audio = s["audio"][person]
            rms = np.sqrt((audio.reshape(N, SPF) ** 2).mean(axis=1))
            voiced = _mask(s["utterances"][person])
            turn = _turn_mask(s, person)
            if voiced.sum() < 10:
                continue
            ratios.append(rms[voiced].mean() / rms[~turn].mean())
            jaw = s["faces"][person][:, IDX["jawOpen"]]
            corrs.append(np.corrcoef(rms[turn], jaw[turn])[0, 1])
            # Pitch of the loudest frame from the autocorrelation peak in 80-300 Hz.
            k = int(np.argmax(rms))
            seg = audio[k * SPF : (k + 1) * SPF] - audio[k * SPF : (k + 1) * SPF].mean()
            ac = np.correlate(seg, seg, mode="full")[SPF - 1 :]
            lo, hi = SPEC.sample_rate // 300, SPEC.sample_rate // 80
            pitches.append(SPEC.sample_rate / (lo + int(np.argmax(ac[lo:hi]))))
    assert min(ratios) > 10.0  # speech vs a noise floor: > 20 dB
    assert np.median(corrs) > 0.3
    assert 90 <= np.median(pitches) <= 270


# --------------------------------------------------------------------------------------------------
# Emotion annotations
# --------------------------------------------------------------------------------------------------


def test_emotion_files_are_derived_from_the_coefficients(corpus: Path, sessions: list[dict]) -> None:
    s = sessions[0]
    for person, clip in enumerate(s["clips"]):
        emotion = pd.read_csv(layout.clip_path(corpus, s["split"], "emotion", clip))
        face = s["faces"][person]
        smile = face[:, [IDX["mouthSmileLeft"], IDX["mouthSmileRight"]]].mean(axis=1)
        np.testing.assert_array_equal(emotion["AU12"].to_numpy(), (smile > 0.45).astype(float))
        np.testing.assert_allclose(emotion[layout.EXPRESSION_COLUMNS].sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(
            emotion.to_numpy(), syn.emotion_from_coefficients(face).to_numpy(), atol=1e-6, rtol=0
        )
    all_emotion = pd.concat(syn.emotion_from_coefficients(f) for s in sessions for f in s["faces"])
    assert all_emotion[["Valence", "Arousal"]].abs().max().max() <= 1.0
    smiling = all_emotion["AU12"] == 1
    assert 0.02 < smiling.mean() < 0.8
    assert all_emotion.loc[smiling, "Valence"].mean() > all_emotion.loc[~smiling, "Valence"].mean() + 0.3


def test_emotion_of_hand_made_faces() -> None:
    mean, _ = reference.coefficient_stats()
    neutral = np.tile(mean, (10, 1))
    neutral[:, layout.EXPRESSION] = 0.02
    smiling = neutral.copy()
    smiling[:, [IDX["mouthSmileLeft"], IDX["mouthSmileRight"]]] = 0.9
    smiling[:, [IDX["cheekSquintLeft"], IDX["cheekSquintRight"]]] = 0.5
    surprised = neutral.copy()
    for name in ("eyeWideLeft", "eyeWideRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight"):
        surprised[:, IDX[name]] = 0.8
    surprised[:, IDX["jawOpen"]] = 0.5
    e_neutral, e_smile, e_surprise = (syn.emotion_from_coefficients(x) for x in (neutral, smiling, surprised))
    assert e_neutral[layout.AU_COLUMNS].to_numpy().sum() == 0
    assert (e_neutral[layout.EXPRESSION_COLUMNS].idxmax(axis=1) == "Neutral").all()
    assert (e_smile[["AU6", "AU12"]] == 1).all().all()
    assert (e_smile[layout.EXPRESSION_COLUMNS].idxmax(axis=1) == "Happy").all()
    assert e_smile["Valence"].min() > e_neutral["Valence"].max()
    assert (e_surprise[["AU1", "AU2", "AU25", "AU26"]] == 1).all().all()
    assert (e_surprise[layout.EXPRESSION_COLUMNS].idxmax(axis=1) == "Surprise").all()
    assert e_surprise["Arousal"].min() > e_neutral["Arousal"].max()
    with pytest.raises(ValueError, match="58"):
        syn.emotion_from_coefficients(np.zeros((5, 52)))


# --------------------------------------------------------------------------------------------------
# Spec and presets
# --------------------------------------------------------------------------------------------------


def test_presets_and_validation() -> None:
    assert syn.preset("sample") == syn.SyntheticSpec()
    paper = syn.preset("paper")
    sizes = {split: n * paper.sessions_per_family for split, n in paper.families.items()}
    for split, real in {"train": 1594, "val": 562, "test": 806}.items():
        assert abs(sizes[split] - real) / real < 0.01
    assert paper.frames == layout.CLIP_FRAMES and paper.sample_rate == layout.CORPUS_SAMPLE_RATE
    with pytest.raises(ValueError, match="preset"):
        syn.preset("huge")
    for bad in ({"n_styles": 9}, {"families": {"dev": 1}}, {"sample_rate": 16_001}, {"frames": 10}):
        with pytest.raises(ValueError):
            syn.SyntheticSpec(**bad).validate()
