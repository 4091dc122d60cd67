"""Audio I/O and frame-aligned, causal audio encoders.

The corpus ships ``.wav`` files (44.1 kHz, mono or stereo, integer or float samples); the model consumes one
audio feature vector per 3DMM frame at ``layout.FPS`` (25 fps). Frame ``i`` covers audio time
``[i / 25, (i + 1) / 25)``, i.e. samples ``[i * hop, (i + 1) * hop)`` with ``hop = 640`` at 16 kHz.

Every encoder here is *causal*: the feature of frame ``i`` is a function of audio before ``(i + 1) / 25`` s
only, within a bounded left context (``left_context_s``). Audio before ``t = 0`` and past the end of the
signal is taken as zeros. That makes offline features (the features stage, whole clips) and online
features (the online generator, audio arriving window by window, :func:`encode_causal_window`) identical,
so a model trained on the former sees the same inputs when run live.

Two encoders share the :class:`AudioEncoder` interface:

- :class:`LogMelProsodyEncoder` (``"logmel"``, the default): weight-free log-mel spectrum plus prosody
  (energy, voicing, pitch) and backward differences. Works offline everywhere.
- :class:`Wav2Vec2Encoder` (``"wav2vec2"``): the paper's encoder, hidden states of a pretrained wav2vec 2.0
  model, computed on bounded causal chunks. Needs weights on local disk or in the Hugging Face cache.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from reactdiff import layout

if TYPE_CHECKING:
    import torch

DEFAULT_ENCODER = "logmel"
DEFAULT_WAV2VEC2_MODEL = "facebook/wav2vec2-base-960h"
ENCODER_NAMES = ("logmel", "wav2vec2")


class AudioError(RuntimeError):
    """An audio file that cannot be used: missing, unreadable, empty or holding non-finite samples."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[AudioError], tuple[Path, str]]:
        # Stages fan work out to processes; the default pickling would call __init__ with one argument.
        return (AudioError, (self.path, self.reason))


class EncoderUnavailableError(RuntimeError):
    """An audio encoder whose weights cannot be found or loaded; the message says how to provide them."""


# ----------------------------------------------------------------------------------------------------------
# I/O


def resample(signal: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a mono ``[samples]`` signal from ``rate`` to ``target_rate`` Hz.

    Returns float32 ``[ceil(samples * target_rate / rate)]``. The anti-aliasing FIR filter
    (``scipy.signal.resample_poly``, Kaiser window) is zero-phase, so each output sample depends on about
    10 input samples of the future (0.25 ms at 44.1 kHz): negligible for offline loading; live callers feed
    audio already at the encoder's rate.
    """
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"resample expects a mono [samples] signal, got shape {signal.shape}")
    if int(rate) != rate or int(target_rate) != target_rate or rate <= 0 or target_rate <= 0:
        raise ValueError(f"sample rates must be positive integers, got {rate} -> {target_rate}")
    rate, target_rate = int(rate), int(target_rate)
    if rate == target_rate:
        return signal.astype(np.float32, copy=True)
    # Imported here: scipy.signal takes about 1 s to import, which every importer of this module (the
    # sampling and serving paths, which never resample) would otherwise pay.
    from scipy.signal import resample_poly

    g = gcd(rate, target_rate)
    out = resample_poly(signal.astype(np.float64), target_rate // g, rate // g)
    return out.astype(np.float32)


def load_wav(path: Path, target_rate: int = layout.MODEL_SAMPLE_RATE) -> np.ndarray:
    """Read an audio file as float32 mono ``[samples]`` in ``[-1, 1]`` at ``target_rate`` Hz.

    Channels are averaged; integer PCM is scaled to ``[-1, 1)``; after resampling the signal is clipped to
    ``[-1, 1]`` (the resampling filter can overshoot by a fraction of a percent near full scale).

    A truncated file (its header promises more data than the file holds) loads the samples that are
    present: libsndfile clamps the frame count to the data on disk. Callers that need a given duration
    compare ``len(result)`` with it (the encoders zero-pad past the end of the signal).

    Raises :class:`AudioError` naming ``path`` when the file is missing, is not audio, holds no samples,
    holds non-finite (NaN or inf) samples, or is sampled below ``target_rate``: upsampling cannot put
    back the band above the file's Nyquist frequency, so its features would differ from those of every
    clip recorded at the encoder's rate (an 8 kHz copy of a clip gives log-mel features that correlate
    only 0.89 with the original's), and a model conditioned on them would hear another kind of voice.
    Such a clip is quarantined rather than silently used.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(path, f"cannot be decoded as audio ({exc})") from exc
    if data.shape[0] == 0:
        raise AudioError(path, "holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "holds non-finite samples (NaN or inf)")
    if rate < target_rate:
        raise AudioError(
            path,
            f"is sampled at {rate} Hz, below the {target_rate} Hz the audio encoder works at: its band above "
            f"{rate // 2} Hz is missing and no resampling restores it; use a recording at {target_rate} Hz "
            "or more",
        )
    mono = data.mean(axis=1, dtype=np.float64)
    out = resample(mono, int(rate), target_rate)
    return np.clip(out, -1.0, 1.0, out=out)


# ----------------------------------------------------------------------------------------------------------
# The encoder interface


@runtime_checkable
class AudioEncoder(Protocol):
    """Maps a mono signal at ``sample_rate`` to per-frame features at ``layout.FPS``.

    ``encode(signal, n_frames)`` returns float32 ``[n_frames, dim]``; the feature of frame ``i`` depends only
    on audio in ``[(i + 1) / FPS - left_context_s, (i + 1) / FPS)`` (zeros before 0 and past the end of
    ``signal``). Encoders may also offer ``encode_range(signal, frame_start, n_frames, signal_offset)`` (both
    here do), which :func:`encode_causal_window` uses to avoid recomputing from frame 0, and a
    ``chunk_frames`` attribute (default 1) when features come in blocks of frames that share audio up to
    the block's end.
    """

    name: str
    dim: int
    sample_rate: int
    left_context_s: float

    def encode(self, signal: np.ndarray, n_frames: int) -> np.ndarray: ...


def _samples_per_frame(sample_rate: int) -> int:
    if sample_rate % layout.FPS:
        raise ValueError(
            f"sample rate {sample_rate} Hz is not a whole number of samples per {layout.FPS} fps frame"
        )
    return sample_rate // layout.FPS


def _check_signal(signal: np.ndarray) -> np.ndarray:
    signal = np.asarray(signal)
    if signal.ndim != 1:
        raise ValueError(f"expected a mono [samples] signal, got shape {signal.shape}")
    return signal


def _check_range(frame_start: int, n_frames: int) -> None:
    if frame_start < 0 or n_frames < 0:
        raise ValueError(f"frame_start and n_frames must be >= 0, got {frame_start}, {n_frames}")


def _audio_span(signal: np.ndarray, signal_offset: int, start: int, stop: int, dtype: type) -> np.ndarray:
    """Absolute samples ``[start, stop)`` of ``signal`` (whose sample 0 is absolute ``signal_offset``).

    Samples outside the signal are zeros. Returns ``[stop - start]``.
    """
    out: np.ndarray = np.zeros(stop - start, dtype=dtype)
    lo = max(start, signal_offset)
    hi = min(stop, signal_offset + len(signal))
    if hi > lo:
        out[lo - start : hi - start] = signal[lo - signal_offset : hi - signal_offset]
    return out


# ----------------------------------------------------------------------------------------------------------
# Weight-free default


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """Triangular filters equally spaced on the HTK mel scale, peak 1: ``[n_fft // 2 + 1, n_mels]``.

    Triangles are evaluated at the FFT bin frequencies from their continuous edges, so even the narrow
    low-frequency filters cover at least one bin when their width exceeds the bin spacing.
    """
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= {sample_rate / 2}, got {f_min}, {f_max}")
    edges = _mel_to_hz(np.linspace(_mel(f_min), _mel(f_max), n_mels + 2))
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)[:, None]
    lo, centre, hi = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
    rising = (freqs - lo) / (centre - lo)
    falling = (hi - freqs) / (hi - centre)
    bank = np.clip(np.minimum(rising, falling), 0.0, None)
    if (bank.sum(axis=0) == 0).any():
        raise ValueError(f"{n_mels} mel bands are too narrow for a {n_fft}-point FFT at {sample_rate} Hz")
    return bank


class LogMelProsodyEncoder:
    """Weight-free causal features: log-mel spectrum, energy, voicing and pitch, plus backward deltas.

    Each frame ``i`` is analysed from one fixed window of ``window_samples`` (default 1024 = 64 ms at
    16 kHz) that *ends* at the frame's end ``(i + 1) * hop``, so the window covers the frame's own 40 ms and
    24 ms before it; audio before 0 is zeros. Deltas are backward differences (frame ``i`` minus frame
    ``i - 1``, with frame ``-1`` analysed from all-zero audio), so the encoder is causal by construction
    with ``left_context_s = (window_samples + hop) / sample_rate`` (104 ms by default).

    Feature layout (``dim = 2 * (n_mels + 3)``, 86 by default; names in ``feature_names``):

    - ``[0, n_mels)``: log mel power, ``log(mel + 1e-10)``, Hann-windowed 64 ms FFT, HTK mel bands
      between ``f_min`` and ``f_max``; power normalised by the window energy so a full-scale sine gives up to
      ``log(window_samples / 4)`` (5.5) in its band.
    - ``n_mels``: log energy ``log(mean(x^2) + 1e-10)`` of the frame's own ``hop`` samples (not the longer
      window), so it follows loudness at exactly the frame's time span.
    - ``n_mels + 1``: voicing in ``[0, 1]``: peak of the normalised cross-correlation (NCCF) of the
      mean-removed window at the chosen pitch lag; 0 when the window's mean power is below ``silence_power``.
    - ``n_mels + 2``: ``log(f0 / Hz)`` from the NCCF pitch tracker when voicing >= ``voicing_threshold``,
      else 0. The lag is the shortest NCCF local maximum within ``octave_tolerance`` of the best one in
      ``[f0_min, f0_max]`` (guards against picking a sub-harmonic), refined by parabolic interpolation.
    - ``[n_mels + 3, 2 * (n_mels + 3))``: backward differences of the above, except that the delta of
      log f0 is 0 unless both frames are voiced (a jump from 0 to ``log f0`` is no pitch slope).

    Features are computed in float64 and in fixed, frame-index-aligned blocks of ``block_frames`` rows,
    so a frame's value is bit-identical however long the signal or the requested range is.
    """

    name = "logmel"
    chunk_frames = 1

    def __init__(
        self,
        sample_rate: int = layout.MODEL_SAMPLE_RATE,
        n_mels: int = 40,
        window_samples: int = 1024,
        f_min: float = 40.0,
        f_max: float | None = None,
        f0_min: float = 60.0,
        f0_max: float = 500.0,
        voicing_threshold: float = 0.5,
        silence_power: float = 1e-7,
        octave_tolerance: float = 0.9,
        block_frames: int = 64,
    ) -> None:
        self.sample_rate = int(sample_rate)
        self.hop = _samples_per_frame(self.sample_rate)
        if window_samples < self.hop:
            raise ValueError(f"window_samples ({window_samples}) must cover a frame ({self.hop} samples)")
        self.n_mels = int(n_mels)
        self.window_samples = int(window_samples)
        self.f0_min, self.f0_max = float(f0_min), float(f0_max)
        self.lag_min = int(math.floor(self.sample_rate / self.f0_max))
        self.lag_max = int(math.ceil(self.sample_rate / self.f0_min))
        if not 2 <= self.lag_min < self.lag_max <= self.window_samples // 2:
            raise ValueError(
                f"pitch range {f0_min}-{f0_max} Hz needs lags {self.lag_min}-{self.lag_max}, which must lie "
                f"in [2, window_samples / 2 = {self.window_samples // 2}]"
            )
        self.voicing_threshold = float(voicing_threshold)
        self.silence_power = float(silence_power)
        self.octave_tolerance = float(octave_tolerance)
        self.block_frames = int(block_frames)
        self.n_static = self.n_mels + 3
        self.dim = 2 * self.n_static
        self.left_context_s = (self.window_samples + self.hop) / self.sample_rate
        self._hann = np.hanning(self.window_samples + 1)[:-1]  # periodic Hann: the standard STFT window
        self._hann_power = float(np.sum(self._hann**2))
        self._mel_bank = mel_filterbank(
            self.n_mels, self.window_samples, self.sample_rate, f_min, f_max or self.sample_rate / 2
        )
        # Autocorrelation through a zero-padded FFT: length >= 2 * window avoids circular wrap-around.
        self._acf_fft = 1 << (2 * self.window_samples - 1).bit_length()

    @property
    def feature_names(self) -> list[str]:
        """Names of the ``dim`` feature columns, in order."""
        static = [f"mel_{k:02d}" for k in range(self.n_mels)] + ["log_energy", "voicing", "log_f0"]
        return static + [f"d_{name}" for name in static]

    # -- per-window analysis --------------------------------------------------------------------------

    def _static_features(self, windows: np.ndarray) -> np.ndarray:
        """Float64 windows ``[rows, window_samples]`` ending at frame ends -> ``[rows, n_mels + 3]``."""
        spectrum = np.fft.rfft(windows * self._hann, axis=1)
        power = (spectrum.real**2 + spectrum.imag**2) / self._hann_power
        log_mel = np.log(power @ self._mel_bank + 1e-10)

        own_frame = windows[:, -self.hop :]
        log_energy = np.log(np.mean(own_frame**2, axis=1) + 1e-10)

        voicing, log_f0 = self._pitch(windows)
        return np.concatenate([log_mel, log_energy[:, None], voicing[:, None], log_f0[:, None]], axis=1)

    def _pitch(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """NCCF pitch tracker on ``[rows, window]`` -> (voicing ``[rows]`` in [0, 1], log f0 ``[rows]``)."""
        n = self.window_samples
        x = windows - windows.mean(axis=1, keepdims=True)
        spec = np.fft.rfft(x, n=self._acf_fft, axis=1)
        acf = np.fft.irfft(spec.real**2 + spec.imag**2, n=self._acf_fft, axis=1)
        lags = np.arange(self.lag_min - 1, self.lag_max + 2)  # one extra lag each side for peak tests
        r = acf[:, lags]
        # Energies of the two overlapping segments x[0:n-lag] and x[lag:n], from a running sum.
        cum = np.cumsum(x**2, axis=1)
        total = cum[:, -1:]
        head = cum[:, n - 1 - lags]
        tail = total - cum[:, lags - 1]
        denom = np.sqrt(np.clip(head * tail, 0.0, None))
        nccf = np.divide(r, denom, out=np.zeros_like(r), where=denom > 1e-20)

        inner = nccf[:, 1:-1]
        is_peak = (inner > nccf[:, :-2]) & (inner >= nccf[:, 2:]) & (inner > 0)
        best = np.where(is_peak, inner, -np.inf).max(axis=1, initial=-np.inf)
        accept = is_peak & (inner >= self.octave_tolerance * best[:, None])
        has_peak = accept.any(axis=1)
        idx = np.argmax(accept, axis=1)  # shortest accepted lag: the fundamental, not a sub-harmonic
        rows = np.arange(len(windows))
        c_prev, c_mid, c_next = nccf[rows, idx], nccf[rows, idx + 1], nccf[rows, idx + 2]
        curvature = c_prev - 2.0 * c_mid + c_next
        shift = np.divide(0.5 * (c_prev - c_next), curvature, out=np.zeros_like(c_mid), where=curvature < 0)
        lag = lags[idx + 1] + np.clip(shift, -0.5, 0.5)

        loud = np.mean(windows**2, axis=1) >= self.silence_power
        voicing = np.where(has_peak & loud, np.clip(c_mid, 0.0, 1.0), 0.0)
        log_f0 = np.where(voicing >= self.voicing_threshold, np.log(self.sample_rate / lag), 0.0)
        return voicing, log_f0

    # -- frames ---------------------------------------------------------------------------------------

    def _static_rows(
        self, signal: np.ndarray, signal_offset: int, row_start: int, row_stop: int
    ) -> np.ndarray:
        """Static features of rows ``[row_start, row_stop)``; row ``r`` is frame ``r - 1`` (row 0 = frame -1).

        Rows are computed in blocks of ``block_frames`` aligned to row 0, always full size, so the same row
        goes through identical array shapes and positions (hence identical floating-point paths) whatever
        range is asked for. Rows of a block outside the range read whatever audio is there and are dropped.
        """
        out = np.empty((row_stop - row_start, self.n_static), dtype=np.float64)
        block = self.block_frames
        for b0 in range(row_start // block * block, row_stop, block):
            # Row r's window is absolute samples [r * hop - window, r * hop).
            first = b0 * self.hop - self.window_samples
            stop = first + (block - 1) * self.hop + self.window_samples
            span = _audio_span(signal, signal_offset, first, stop, np.float64)
            windows = sliding_window_view(span, self.window_samples)[:: self.hop]
            feats = self._static_features(np.ascontiguousarray(windows))
            lo, hi = max(b0, row_start), min(b0 + block, row_stop)
            out[lo - row_start : hi - row_start] = feats[lo - b0 : hi - b0]
        return out

    def encode_range(
        self, signal: np.ndarray, frame_start: int, n_frames: int, signal_offset: int = 0
    ) -> np.ndarray:
        """Features of frames ``[frame_start, frame_start + n_frames)``: float32 ``[n_frames, dim]``.

        ``signal`` is mono at ``sample_rate``; its sample 0 is absolute sample ``signal_offset`` (a ring
        buffer of recent audio); audio outside it is zeros.
        """
        signal = _check_signal(signal)
        _check_range(frame_start, n_frames)
        static = self._static_rows(signal, signal_offset, frame_start, frame_start + n_frames + 1)
        prev, cur = static[:-1], static[1:]
        delta = cur - prev
        f0 = self.n_static - 1
        both_voiced = (cur[:, f0] > 0) & (prev[:, f0] > 0)
        delta[:, f0] = np.where(both_voiced, delta[:, f0], 0.0)
        return np.concatenate([cur, delta], axis=1).astype(np.float32)

    def encode(self, signal: np.ndarray, n_frames: int) -> np.ndarray:
        """Features of frames ``[0, n_frames)`` of a mono signal: float32 ``[n_frames, dim]``."""
        return self.encode_range(signal, 0, n_frames)


# ----------------------------------------------------------------------------------------------------------
# wav2vec 2.0


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _weights_help(model_path: str) -> str:
    return (
        f"Provide wav2vec2 weights in one of two ways: (1) pass model_path=<a local directory holding "
        f"config.json and model.safetensors>, e.g. made on a machine with internet by "
        f"`Wav2Vec2Model.from_pretrained('{DEFAULT_WAV2VEC2_MODEL}').save_pretrained(DIR)`; or (2) "
        f"pre-populate the Hugging Face cache (HF_HOME) with the model, e.g. `hf download {model_path}`, and "
        f"pass its name. "
        f"This project sets HF_HUB_OFFLINE=1, so nothing is downloaded at run time. The weight-free encoder "
        f"'logmel' needs no weights."
    )


def _looks_like_path(model_path: str) -> bool:
    # A hub name is "name" or "org/name"; anything else is meant as a filesystem path.
    return (
        os.path.isabs(model_path)
        or model_path.startswith((".", "~"))
        or model_path.count("/") > 1
        or (os.sep != "/" and os.sep in model_path)
    )


def load_wav2vec2_model(model_path: str | Path = DEFAULT_WAV2VEC2_MODEL) -> Any:
    """Load a ``transformers.Wav2Vec2Model`` from a local directory or the Hugging Face cache.

    A hub name is resolved with ``local_files_only`` when ``HF_HUB_OFFLINE`` is set. Raises
    :class:`EncoderUnavailableError` explaining how to provide the weights when they cannot be found.
    """
    from transformers import Wav2Vec2Model

    name = str(model_path)
    local = Path(name).expanduser()
    if local.exists():
        try:
            return Wav2Vec2Model.from_pretrained(str(local), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EncoderUnavailableError(
                f"cannot load wav2vec2 weights from {local} ({exc}). {_weights_help(DEFAULT_WAV2VEC2_MODEL)}"
            ) from exc
    if isinstance(model_path, Path) or _looks_like_path(name):
        raise EncoderUnavailableError(
            f"wav2vec2 model directory {local} does not exist. {_weights_help(DEFAULT_WAV2VEC2_MODEL)}"
        )
    try:
        return Wav2Vec2Model.from_pretrained(name, local_files_only=_hub_offline())
    except (OSError, ValueError) as exc:
        raise EncoderUnavailableError(
            f"wav2vec2 model {name!r} is neither a local directory nor in the Hugging Face cache ({exc}). "
            f"{_weights_help(name)}"
        ) from exc


def _conv_geometry(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """Receptive field and total stride, in samples, of a stack of unpadded 1-D convolutions."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (k - 1) * jump
        jump *= s
    return field, jump


class Wav2Vec2Encoder:
    """Causal wav2vec 2.0 features at 25 fps: hidden states at 50 Hz, mean-pooled 2:1 per video frame.

    wav2vec 2.0 is not causal by itself: its convolutional feature extractor (receptive field 400 samples,
    stride 320 at 16 kHz) is local, but the group norm of its first layer (base models), its convolutional
    positional embedding and its transformer all look at the whole input. So frames are computed in chunks
    of ``chunk_frames`` video frames: chunk ``k`` (frames ``[k C, (k + 1) C)``) runs the model on the audio
    window of ``input_samples`` that *ends at the chunk's end* and keeps the last ``2 C`` hidden frames,
    whose receptive fields tile the chunk's 40 ms frames (the last one ends exactly at the chunk end; each
    pair of 20 ms hidden frames is averaged into one video frame). Chunks are independent, batched
    ``batch_size`` at a time; audio before 0 is zeros.

    Latency and context trade-off:

    - ``chunk_frames = 1`` (default): strictly causal per frame (zero lookahead), one model run per frame.
      Cost per second of audio is ``25 * left_context_s`` seconds of model input: fine on a GPU, slow on
      CPU for the base model (about 5 s per 30 s of input on 2 threads, i.e. ~2 min per 30 s clip at 1 s
      of context).
    - ``chunk_frames = C > 1``: ``C`` times cheaper, but a frame may use audio up to the end of its chunk,
      i.e. up to ``(C - 1) / 25`` s of lookahead (a latency of ``C / 25`` s online). ``C`` equal to the
      online window (16 frames in the paper) matches the paper's window-level setting, where a whole
      window of speaker audio is observed before its reaction is generated. Chunks are aligned to frame 0,
      so online windows must end on a chunk boundary.
    - ``left_context_s`` (default 1.0 s): more context gives features closer to whole-clip wav2vec2 (the
      positional convolution alone spans 2.56 s) at linear-to-quadratic cost per run; it is rounded to the
      model's 20 ms grid and enlarged to at least one chunk.

    Each run's input is normalised to zero mean and unit variance when ``normalize`` (what
    ``Wav2Vec2FeatureExtractor`` does for wav2vec2-base-960h and the large models), per chunk, so causal.
    ``layer = -1`` takes the final output (``last_hidden_state``); ``0 <= layer <= num_hidden_layers``
    selects ``hidden_states[layer]`` (0: the input to the first transformer layer).
    """

    name = "wav2vec2"

    def __init__(
        self,
        model_path: str | Path = DEFAULT_WAV2VEC2_MODEL,
        layer: int = -1,
        left_context_s: float = 1.0,
        chunk_frames: int = 1,
        batch_size: int = 32,
        normalize: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        import torch

        self.sample_rate = layout.MODEL_SAMPLE_RATE
        self.hop = _samples_per_frame(self.sample_rate)
        if chunk_frames < 1 or batch_size < 1:
            raise ValueError(f"chunk_frames and batch_size must be >= 1, got {chunk_frames}, {batch_size}")
        if left_context_s <= 0:
            raise ValueError(f"left_context_s must be > 0, got {left_context_s}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = load_wav2vec2_model(model_path).to(self.device).eval()
        config = self.model.config
        self.model_path = str(model_path)
        self.dim = int(config.hidden_size)
        n_layers = int(config.num_hidden_layers)
        if layer != -1 and not 0 <= layer <= n_layers:
            raise ValueError(f"layer must be -1 (last) or in [0, {n_layers}] for this model, got {layer}")
        self.layer = int(layer)
        field, stride = _conv_geometry(config.conv_kernel, config.conv_stride)
        if self.hop % stride:
            raise ValueError(
                f"model stride {stride} samples does not divide the {self.hop}-sample video frame"
            )
        self.receptive_field, self.model_stride = field, stride
        self.pool = self.hop // stride  # hidden frames per video frame (2 for 320-sample stride at 16 kHz)
        self.chunk_frames = int(chunk_frames)
        self.batch_size = int(batch_size)
        self.normalize = bool(normalize)
        keep = self.pool * self.chunk_frames
        self.model_frames = max(keep, round(left_context_s * self.sample_rate / stride))
        # The input length whose last hidden frame's receptive field ends exactly at the input's end.
        self.input_samples = field + stride * (self.model_frames - 1)
        self.left_context_s = self.input_samples / self.sample_rate

    def _run_chunks(self, signal: np.ndarray, signal_offset: int, chunks: np.ndarray) -> np.ndarray:
        """Features of whole chunks: ``[len(chunks) * chunk_frames, dim]`` float32."""
        import torch

        keep = self.pool * self.chunk_frames
        ends = (chunks + 1) * self.chunk_frames * self.hop
        out = []
        with torch.inference_mode():
            for b in range(0, len(chunks), self.batch_size):
                batch = np.stack(
                    [
                        _audio_span(signal, signal_offset, e - self.input_samples, e, np.float32)
                        for e in ends[b : b + self.batch_size]
                    ]
                )
                if self.normalize:
                    mean = batch.mean(axis=1, keepdims=True)
                    var = batch.var(axis=1, keepdims=True)
                    batch = (batch - mean) / np.sqrt(var + 1e-7)
                inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
                result = self.model(inputs, output_hidden_states=self.layer != -1)
                hidden = result.last_hidden_state if self.layer == -1 else result.hidden_states[self.layer]
                if hidden.shape[1] != self.model_frames:
                    raise RuntimeError(
                        f"wav2vec2 returned {hidden.shape[1]} frames for {self.input_samples} samples, "
                        f"expected {self.model_frames}: unexpected feature-extractor geometry"
                    )
                pooled = (
                    hidden[:, -keep:].reshape(len(inputs), self.chunk_frames, self.pool, self.dim).mean(2)
                )
                out.append(pooled.reshape(-1, self.dim).float().cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(out, axis=0)

    def encode_range(
        self, signal: np.ndarray, frame_start: int, n_frames: int, signal_offset: int = 0
    ) -> np.ndarray:
        """Features of frames ``[frame_start, frame_start + n_frames)``: float32 ``[n_frames, dim]``.

        ``signal`` is mono at 16 kHz; its sample 0 is absolute sample ``signal_offset``; audio outside it
        is zeros. Whole chunks covering the range are computed and sliced.
        """
        signal = _check_signal(signal)
        _check_range(frame_start, n_frames)
        if n_frames == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        c = self.chunk_frames
        first, last = frame_start // c, (frame_start + n_frames - 1) // c
        feats = self._run_chunks(signal, signal_offset, np.arange(first, last + 1))
        lo = frame_start - first * c
        return feats[lo : lo + n_frames]

    def encode(self, signal: np.ndarray, n_frames: int) -> np.ndarray:
        """Features of frames ``[0, n_frames)`` of a mono 16 kHz signal: float32 ``[n_frames, dim]``."""
        return self.encode_range(signal, 0, n_frames)


# ----------------------------------------------------------------------------------------------------------
# Factory and online use


def build_encoder(name: str = DEFAULT_ENCODER, **kwargs: Any) -> AudioEncoder:
    """``"logmel"`` -> :class:`LogMelProsodyEncoder`, ``"wav2vec2"`` -> :class:`Wav2Vec2Encoder`.

    ``kwargs`` go to the constructor (wav2vec2: ``model_path``, ``layer``, ``left_context_s``,
    ``chunk_frames``, ``batch_size``, ``normalize``, ``device``).
    """
    if name == "logmel":
        return LogMelProsodyEncoder(**kwargs)
    if name == "wav2vec2":
        return Wav2Vec2Encoder(**kwargs)
    raise ValueError(f"unknown audio encoder {name!r}; choose one of {ENCODER_NAMES}")


def encode_causal_window(
    encoder: AudioEncoder,
    signal_so_far: np.ndarray,
    frame_start: int,
    n_frames: int,
    signal_start_sample: int = 0,
) -> np.ndarray:
    """Features of frames ``[frame_start, frame_start + n_frames)`` from audio up to the last frame's end.

    For the online generator, which receives audio window by window. ``signal_so_far`` is mono at
    ``encoder.sample_rate``; its sample 0 is absolute sample ``signal_start_sample`` (0 when it holds the
    whole stream, larger for a ring buffer of recent audio). Audio after the end of the last frame is
    ignored and missing audio up to it is zeros. Returns float32 ``[n_frames, dim]``, equal to
    ``encoder.encode(full_signal, N)[frame_start : frame_start + n_frames]`` whenever the buffer covers the
    encoder's left context; raises ``ValueError`` when it does not, or when the window does not end on a
    boundary of the encoder's ``chunk_frames`` blocks.
    """
    signal_so_far = _check_signal(signal_so_far)
    _check_range(frame_start, n_frames)
    hop = _samples_per_frame(encoder.sample_rate)
    stop_frame = frame_start + n_frames
    chunk = int(getattr(encoder, "chunk_frames", 1))
    if n_frames and stop_frame % chunk:
        raise ValueError(
            f"encoder {encoder.name!r} computes frames in chunks of {chunk}; a causal window must end on a "
            f"chunk boundary, but frames [{frame_start}, {stop_frame}) end at {stop_frame}"
        )
    first_chunk_end = (frame_start // chunk + 1) * chunk * hop
    # Sample counts are integers; the tolerance absorbs the float round trip through seconds.
    needed = max(0, first_chunk_end - math.ceil(encoder.left_context_s * encoder.sample_rate - 1e-6))
    if signal_start_sample > needed:
        raise ValueError(
            f"audio buffer starts at sample {signal_start_sample}, but frame {frame_start} needs audio from "
            f"sample {needed} ({encoder.left_context_s:.3f} s of left context for encoder {encoder.name!r})"
        )
    end = stop_frame * hop
    visible = signal_so_far[: max(0, end - signal_start_sample)]
    if hasattr(encoder, "encode_range"):
        return encoder.encode_range(visible, frame_start, n_frames, signal_offset=signal_start_sample)
    absolute = np.concatenate([np.zeros(signal_start_sample, dtype=visible.dtype), visible])
    return encoder.encode(absolute, stop_frame)[frame_start:stop_frame]
