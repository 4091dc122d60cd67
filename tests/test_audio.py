"""Audio I/O and the causal frame-aligned encoders (reactdiff.audio). Offline: local files and models only."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: these tests never touch the network

import numpy as np
import pytest
import soundfile as sf

from reactdiff import layout
from reactdiff.audio import (
    AudioEncoder,
    AudioError,
    EncoderUnavailableError,
    LogMelProsodyEncoder,
    Wav2Vec2Encoder,
    build_encoder,
    encode_causal_window,
    load_wav,
    resample,
)

SR = layout.MODEL_SAMPLE_RATE
HOP = SR // layout.FPS  # 640 samples per video frame


def _tone(freq: float, seconds: float, amplitude: float = 0.5, rate: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


def _peak_frequency(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


# ----------------------------------------------------------------------------------------------------------
# load_wav / resample


def test_load_wav_stereo_int16_44k_becomes_16k_mono(tmp_path: Path) -> None:
    seconds = 1.5
    n = round(seconds * layout.CORPUS_SAMPLE_RATE)
    base = _tone(440.0, seconds, amplitude=1.0, rate=layout.CORPUS_SAMPLE_RATE)
    stereo = np.stack([0.6 * base, 0.2 * base], axis=1)  # channel mean: 0.4 * base
    path = tmp_path / "stereo.wav"
    sf.write(path, np.round(stereo * 32767).astype(np.int16), layout.CORPUS_SAMPLE_RATE, subtype="PCM_16")

    audio = load_wav(path)

    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == int(np.ceil(n * SR / layout.CORPUS_SAMPLE_RATE)) == 24_000
    assert np.abs(audio).max() <= 1.0
    rms = np.sqrt(np.mean(audio[1000:-1000].astype(np.float64) ** 2))
    assert rms == pytest.approx(0.4 / np.sqrt(2), rel=0.01)
    assert _peak_frequency(audio, SR) == pytest.approx(440.0, abs=1.0)


def test_resample_keeps_frequency_and_removes_content_above_new_nyquist(tmp_path: Path) -> None:
    rate = layout.CORPUS_SAMPLE_RATE
    tone = _tone(1000.0, 2.0, rate=rate)
    out = resample(tone, rate, SR)
    assert len(out) == 2 * SR
    assert _peak_frequency(out, SR) == pytest.approx(1000.0, abs=0.5)  # 0.5 Hz bins over 2 s

    # 10 kHz is above the 8 kHz Nyquist of the target: the anti-aliasing filter must remove it, not fold it.
    alias = resample(_tone(10_000.0, 2.0, rate=rate), rate, SR)
    assert np.sqrt(np.mean(alias[200:-200] ** 2)) < 0.01 * np.sqrt(np.mean(tone**2))

    # Same path through a file, and the identity rate is a copy.
    path = tmp_path / "tone.wav"
    sf.write(path, tone, rate, subtype="FLOAT")
    assert _peak_frequency(load_wav(path), SR) == pytest.approx(1000.0, abs=0.5)
    same = resample(out, SR, SR)
    assert same is not out and np.array_equal(same, out)


def test_truncated_wav_loads_the_samples_present(tmp_path: Path) -> None:
    rate = layout.CORPUS_SAMPLE_RATE
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((rate, 2)) * 3000).astype(np.int16)
    full = tmp_path / "full.wav"
    sf.write(full, stereo, rate, subtype="PCM_16")
    raw = full.read_bytes()
    header = len(raw) - stereo.size * 2
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(raw[: len(raw) // 2 + 3])  # header still claims 1 s; cut mid-frame on purpose
    present = (len(raw) // 2 + 3 - header) // 4  # whole stereo int16 frames left on disk

    audio = load_wav(truncated)

    assert len(audio) == int(np.ceil(present * SR / rate))
    expected = resample(stereo[:present].astype(np.float64).mean(axis=1) / 32768.0, rate, SR)
    np.testing.assert_allclose(audio, expected, atol=1e-6)
    # Away from the cut, it is the start of the complete recording.
    np.testing.assert_allclose(audio[:-50], load_wav(full)[: len(audio) - 50], atol=1e-6)


@pytest.mark.parametrize(
    "content",
    [b"this is not a wav file at all" * 20, b"RIFF\x24\x00\x00\x00WAVEfmt ", b""],
    ids=["garbage", "header-only", "zero-bytes"],
)
def test_unreadable_file_raises_audio_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError) as info:
        load_wav(path)
    assert info.value.path == path and str(path) in str(info.value)


def test_missing_empty_and_non_finite_files_raise(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="no such file"):
        load_wav(tmp_path / "absent.wav")

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), dtype=np.int16), layout.CORPUS_SAMPLE_RATE, subtype="PCM_16")
    with pytest.raises(AudioError, match="no audio samples") as info:
        load_wav(empty)
    assert str(empty) in str(info.value)

    nan = tmp_path / "nan.wav"
    samples = _tone(200.0, 0.1, rate=layout.CORPUS_SAMPLE_RATE).astype(np.float32)
    samples[7] = np.nan
    sf.write(nan, samples, layout.CORPUS_SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_wav(nan)


def test_audio_below_the_encoders_rate_is_refused_not_upsampled(tmp_path: Path) -> None:
    narrow = tmp_path / "phone.wav"
    sf.write(narrow, _tone(300.0, 0.5, rate=8000), 8000, subtype="PCM_16")
    with pytest.raises(AudioError) as info:
        load_wav(narrow)
    assert str(info.value) == (
        f"{narrow}: is sampled at 8000 Hz, below the 16000 Hz the audio encoder works at: its band above "
        "4000 Hz is missing and no resampling restores it; use a recording at 16000 Hz or more"
    )
    exact = tmp_path / "exact.wav"  # at the encoder's own rate: used as it is
    sf.write(exact, _tone(300.0, 0.5, rate=SR), SR, subtype="FLOAT")
    assert len(load_wav(exact)) == SR // 2


def test_audio_error_survives_pickling() -> None:
    # Stage workers run in other processes and send exceptions back pickled.
    err = pickle.loads(pickle.dumps(AudioError(Path("/data/a.wav"), "holds no audio samples")))
    assert isinstance(err, AudioError) and err.path == Path("/data/a.wav") and "no audio" in str(err)


# ----------------------------------------------------------------------------------------------------------
# LogMelProsodyEncoder

LOGMEL = LogMelProsodyEncoder()
N_MELS = LOGMEL.n_mels
ENERGY, VOICING, LOG_F0 = N_MELS, N_MELS + 1, N_MELS + 2
N_STATIC = N_MELS + 3


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A voiced harmonic source with a gliding f0 and a noise floor, amplitude-modulated like syllables."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2
    return 0.2 * envelope * voice + 0.01 * rng.standard_normal(len(t))


def test_logmel_shape_layout_and_zero_padding_past_the_end() -> None:
    assert isinstance(LOGMEL, AudioEncoder)
    assert LOGMEL.dim == 86 == len(LOGMEL.feature_names) and LOGMEL.sample_rate == SR
    assert LOGMEL.left_context_s == pytest.approx((1024 + HOP) / SR)
    feats = LOGMEL.encode(_speechlike(1.0, 0), 40)  # 25 frames of audio, 15 past its end
    assert feats.shape == (40, LOGMEL.dim) and feats.dtype == np.float32 and np.isfinite(feats).all()
    silent = LOGMEL.encode(np.zeros(SR), 1)[0]
    # Frames whose 64 ms window lies wholly past the end read zeros: exactly the silent frame (deltas 0).
    first_silent = 25 + int(np.ceil(1024 / HOP))
    np.testing.assert_array_equal(feats[first_silent + 1 :], np.tile(silent, (40 - first_silent - 1, 1)))
    assert LOGMEL.encode(np.zeros(10), 0).shape == (0, LOGMEL.dim)


@pytest.mark.parametrize("freq", [110.0, 200.0, 310.0])
def test_logmel_pitch_of_a_pure_tone(freq: float) -> None:
    feats = LOGMEL.encode(_tone(freq, 1.0), 25)
    voiced = feats[2:]  # frames 0-1 still have zeros (audio before 0) in their window
    assert voiced[:, VOICING].min() > 0.9
    np.testing.assert_allclose(np.exp(voiced[:, LOG_F0]), freq, rtol=0.05)
    # The tracker is far better than the 5 % bound on a clean tone: parabolic lag interpolation.
    np.testing.assert_allclose(np.exp(voiced[:, LOG_F0]), freq, rtol=0.002)
    # The mel band holding the tone is the loudest.
    centres = np.argmax(LOGMEL._mel_bank, axis=0) * SR / 1024
    assert abs(centres[np.argmax(voiced[:, :N_MELS].mean(axis=0))] - freq) < 60


def test_logmel_silence_and_noise_are_unvoiced() -> None:
    silence = LOGMEL.encode(np.zeros(SR), 25)
    assert np.all(silence[:, VOICING] == 0) and np.all(silence[:, LOG_F0] == 0)
    np.testing.assert_allclose(silence[:, ENERGY], np.log(1e-10), rtol=1e-6)
    np.testing.assert_allclose(silence[:, :N_MELS], np.log(1e-10), rtol=1e-6)
    assert np.all(silence[:, N_STATIC:] == 0)

    noise = LOGMEL.encode(0.3 * np.random.default_rng(1).standard_normal(SR), 25)
    assert noise[:, VOICING].max() < 0.4 and np.all(noise[:, LOG_F0] == 0)
    assert noise[:, ENERGY].min() > np.log(0.09) - 0.3  # log of the noise power 0.3^2


def test_logmel_energy_follows_loud_quiet_alternation_exactly() -> None:
    # 0.2 s segments = 5 frames; a 200 Hz tone has exactly 8 periods per 640-sample frame, so each frame's
    # mean square is exactly A^2 / 2 whatever the phase.
    loud, quiet = 0.5, 0.05
    envelope = np.repeat(np.tile([loud, quiet], 4), round(0.2 * SR))
    signal = envelope * np.sin(2 * np.pi * 200.0 * np.arange(len(envelope)) / SR)
    feats = LOGMEL.encode(signal, 40)
    amplitude = np.repeat(np.tile([loud, quiet], 4), 5)
    np.testing.assert_allclose(feats[:, ENERGY], np.log(amplitude**2 / 2 + 1e-10), rtol=1e-5)
    # Backward delta of energy: +-log(100) at each segment change, 0 inside segments, and frame 0 against
    # the all-zero frame -1.
    delta = feats[:, N_STATIC + N_MELS]
    assert delta[0] == pytest.approx(np.log(loud**2 / 2) - np.log(1e-10), rel=1e-5)
    steps = np.diff(np.log(amplitude**2 / 2 + 1e-10))
    np.testing.assert_allclose(delta[1:], steps, atol=1e-5)


def test_logmel_deltas_are_backward_differences() -> None:
    feats = LOGMEL.encode(_speechlike(1.0, 2), 25).astype(np.float64)
    static, delta = feats[:, :N_STATIC], feats[:, N_STATIC:]
    plain = [k for k in range(N_STATIC) if k != LOG_F0]
    np.testing.assert_allclose(delta[1:, plain], np.diff(static[:, plain], axis=0), atol=1e-4)
    both = (static[1:, LOG_F0] > 0) & (static[:-1, LOG_F0] > 0)
    assert both.sum() > 10
    expected_f0 = np.where(both, np.diff(static[:, LOG_F0]), 0.0)
    np.testing.assert_allclose(delta[1:, LOG_F0], expected_f0, atol=1e-5)


def test_logmel_is_causal_bit_for_bit() -> None:
    past = _speechlike(1.0, 3)
    cut = 13 * HOP  # the end of frame 12: not a block boundary
    rng = np.random.default_rng(4)
    futures = [np.zeros(SR), 0.8 * rng.standard_normal(SR), _tone(333.0, 1.0, amplitude=0.9)]
    encoded = [LOGMEL.encode(np.concatenate([past[:cut], future]), 50) for future in futures]
    truncated = LOGMEL.encode(past[:cut], 50)
    for feats in encoded:
        np.testing.assert_array_equal(feats[:13], truncated[:13])
    # The futures do reach frame 13 on, so the check above is not vacuous.
    assert np.abs(encoded[1][13:] - encoded[2][13:]).max() > 1.0
    # A longer request leaves earlier frames bit-identical too (fixed-size, aligned blocks).
    np.testing.assert_array_equal(LOGMEL.encode(past, 90)[:25], LOGMEL.encode(past, 25))


@pytest.mark.parametrize(("start", "n"), [(0, 16), (5, 16), (60, 10), (63, 2), (40, 35)])
def test_logmel_causal_window_equals_slice_of_full_encode(start: int, n: int) -> None:
    signal = _speechlike(3.0, 5)  # 75 frames: windows cross the 64-frame block boundary
    full = LOGMEL.encode(signal, 75)
    expected = full[start : start + n]
    # Whole stream, including audio after the window that must be ignored.
    np.testing.assert_array_equal(encode_causal_window(LOGMEL, signal, start, n), expected)
    # Only the audio received so far.
    so_far = signal[: (start + n) * HOP]
    np.testing.assert_array_equal(encode_causal_window(LOGMEL, so_far, start, n), expected)
    # A ring buffer that starts exactly where the left context begins.
    first = max(0, (start + 1) * HOP - round(LOGMEL.left_context_s * SR))
    np.testing.assert_array_equal(
        encode_causal_window(LOGMEL, so_far[first:], start, n, signal_start_sample=first), expected
    )
    if first > 0:
        with pytest.raises(ValueError, match="left context"):
            encode_causal_window(LOGMEL, so_far[first + 1 :], start, n, signal_start_sample=first + 1)


def test_build_encoder_defaults_and_errors() -> None:
    enc = build_encoder("logmel", n_mels=20)
    assert isinstance(enc, LogMelProsodyEncoder) and enc.dim == 46
    assert build_encoder().name == "logmel"
    with pytest.raises(ValueError, match="unknown audio encoder"):
        build_encoder("mfcc")


# ----------------------------------------------------------------------------------------------------------
# Wav2Vec2Encoder with a tiny, locally created model

LEFT_CONTEXT = 0.5


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=8,
    )
    path = tmp_path_factory.mktemp("wav2vec2") / "tiny"
    Wav2Vec2Model(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def w2v(tiny_wav2vec2: Path) -> Wav2Vec2Encoder:
    return build_encoder("wav2vec2", model_path=str(tiny_wav2vec2), left_context_s=LEFT_CONTEXT, device="cpu")


@pytest.fixture(scope="module")
def speech2s() -> np.ndarray:
    return _speechlike(2.0, 6).astype(np.float32)


def test_wav2vec2_shape_geometry_and_determinism(w2v, tiny_wav2vec2: Path, speech2s: np.ndarray) -> None:
    assert isinstance(w2v, AudioEncoder)
    assert w2v.dim == 32 and w2v.sample_rate == SR and w2v.pool == 2
    assert (w2v.receptive_field, w2v.model_stride) == (400, 320)
    # 25 hidden frames of 20 ms: 400 + 320 * 24 samples, the last receptive field ending at the frame end.
    assert w2v.input_samples == 8080 and w2v.left_context_s == pytest.approx(8080 / SR)
    feats = w2v.encode(speech2s, 50)
    assert feats.shape == (50, 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_array_equal(w2v.encode(speech2s, 50), feats)
    again = build_encoder("wav2vec2", model_path=tiny_wav2vec2, left_context_s=LEFT_CONTEXT, device="cpu")
    np.testing.assert_array_equal(again.encode(speech2s, 50), feats)


def test_wav2vec2_frame_is_the_mean_of_two_hidden_frames_ending_at_the_frame_end(
    w2v, speech2s: np.ndarray
) -> None:
    import torch

    feats = w2v.encode(speech2s, 50)
    for frame in (3, 30):
        end = (frame + 1) * HOP
        window = np.zeros(w2v.input_samples, dtype=np.float32)
        piece = speech2s[max(0, end - w2v.input_samples) : end]
        window[len(window) - len(piece) :] = piece
        window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
        with torch.inference_mode():
            hidden = w2v.model(torch.from_numpy(window)[None]).last_hidden_state[0]
        np.testing.assert_allclose(feats[frame], hidden[-2:].mean(0).numpy(), atol=1e-5)


def test_wav2vec2_is_causal(w2v, speech2s: np.ndarray) -> None:
    cut = 25 * HOP
    rng = np.random.default_rng(7)
    base = w2v.encode(speech2s[:cut], 50)
    for future in (speech2s[cut:], (0.5 * rng.standard_normal(SR)).astype(np.float32)):
        feats = w2v.encode(np.concatenate([speech2s[:cut], future]), 50)
        np.testing.assert_array_equal(feats[:25], base[:25])
        assert np.abs(feats[25:] - base[25:]).max() > 1e-3  # the future does reach later frames


@pytest.mark.parametrize(("start", "n"), [(0, 16), (20, 16), (37, 13)])
def test_wav2vec2_causal_window_equals_slice_of_full_encode(
    w2v, speech2s: np.ndarray, start: int, n: int
) -> None:
    full = w2v.encode(speech2s, 50)
    # Batches differ in size between the two calls, so allow float rounding, no more.
    np.testing.assert_allclose(
        encode_causal_window(w2v, speech2s, start, n), full[start : start + n], atol=1e-5
    )
    first = max(0, (start + 1) * HOP - w2v.input_samples)
    buffer = speech2s[first : (start + n) * HOP]
    np.testing.assert_allclose(
        encode_causal_window(w2v, buffer, start, n, signal_start_sample=first),
        full[start : start + n],
        atol=1e-5,
    )


def test_wav2vec2_chunked_mode_is_causal_per_chunk(tiny_wav2vec2: Path, speech2s: np.ndarray) -> None:
    enc = build_encoder(
        "wav2vec2", model_path=tiny_wav2vec2, left_context_s=LEFT_CONTEXT, chunk_frames=4, device="cpu"
    )
    assert enc.chunk_frames == 4
    full = enc.encode(speech2s, 48)
    cut = 24 * HOP  # a chunk boundary
    other = np.concatenate([speech2s[:cut], np.zeros(SR, dtype=np.float32)])
    np.testing.assert_array_equal(enc.encode(other, 48)[:24], full[:24])
    np.testing.assert_allclose(encode_causal_window(enc, speech2s, 8, 16), full[8:24], atol=1e-5)
    with pytest.raises(ValueError, match="chunk boundary"):
        encode_causal_window(enc, speech2s, 8, 15)


def test_wav2vec2_layer_option(tiny_wav2vec2: Path, w2v, speech2s: np.ndarray) -> None:
    def encode(layer: int) -> np.ndarray:
        enc = build_encoder(
            "wav2vec2", model_path=tiny_wav2vec2, layer=layer, left_context_s=LEFT_CONTEXT, device="cpu"
        )
        return enc.encode(speech2s[: 10 * HOP], 10)

    last = w2v.encode(speech2s[: 10 * HOP], 10)
    np.testing.assert_allclose(encode(2), last, atol=1e-6)  # hidden_states[num_layers] is the output
    assert np.abs(encode(1) - last).max() > 1e-3
    with pytest.raises(ValueError, match="layer"):
        encode(3)


def test_wav2vec2_missing_weights_say_how_to_provide_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(EncoderUnavailableError) as info:
        build_encoder("wav2vec2", model_path=str(tmp_path / "no-such-model"))
    message = str(info.value)
    assert str(tmp_path / "no-such-model") in message
    assert "model_path" in message and "HF_HUB_OFFLINE" in message and "cache" in message

    # A hub name that is not in the cache fails at once, offline, with the same advice.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError, match="HF_HUB_OFFLINE"):
        build_encoder("wav2vec2", model_path="reactdiff-test/no-such-model")

    # A directory without weights is named as well.
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(EncoderUnavailableError, match="empty-dir"):
        build_encoder("wav2vec2", model_path=tmp_path / "empty-dir")
