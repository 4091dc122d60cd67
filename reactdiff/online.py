"""Online (streaming) generation of M listener reactions, window after window (paper sec. 3-4, app. B).

The conversation advances in windows of ``w`` frames (paper: 16 frames = 640 ms at 25 fps). For the
window ``[h - w + 1, h]`` the generator observes the speaker's face and audio of that window only (never
a later frame), and denoises M samples as one batch of the EDM denoiser, each conditioned on

- the speaker face and audio of the window (shared by the M rows),
- that sample's OWN previously generated window ``[h - 2w + 1, h - w]`` (so the M reactions are M
  independent trajectories, not M draws around one shared history),
- the global index ``h`` of the window's last frame,

with DPM-Solver++(2M) (SDE by default, as Algorithm 2), ``steps`` denoiser evaluations and
classifier-free guidance (``guidance_scale``; 1 = plain conditional sampling) over the noise levels
in ``guidance_interval`` (``None``: all of them).

Before the conversation starts there is no generated past: the past frames before frame 0 are the
listener's starting state (``initial_past="first_frame"``, what :mod:`reactdiff.windows` trains with by
default) or the train mean (``"mean"``), exactly as the training windows define them.

Randomness. Each window draws its initial noise ``[M, w, 58]`` and the SDE's per-step noise from the
generator's own ``torch.Generator`` (on the CPU, so CPU and CUDA runs draw the same numbers), seeded at
:meth:`OnlineReactionGenerator.reset`. The amount drawn per window is fixed, so the noise of window ``k``
depends on the seed and ``k`` only, never on the speaker inputs: changing the speaker after window ``k``
leaves windows ``1..k`` bit-identical.

Ranges. The 52 expression coefficients are blendshape weights in ``[0, 1]``; the denoiser's estimate can
overshoot them slightly (more so early in training), and a weight outside the range has no face to
render. With ``clip_expression=True`` (the default) each generated window's expression weights are
clamped to ``[0, 1]`` before they are returned AND before they become the next window's past, so the
model is always conditioned on a past inside the range it was trained on. Pose is unbounded and is
never clipped.

Streams. One generator can run ``streams`` independent conversations in lockstep (offline batch
generation, :func:`generate_clips`): their ``streams x M`` rows go through the denoiser as one batch,
which is several times faster on a CPU than one conversation at a time, while each stream draws its
noise from its own ``torch.Generator``; a stream batched with others gets the same noise as alone (its
outputs then agree to float rounding, the batch size changing the order of the network's sums).

Bad input. A live speaker comes from a face tracker and a microphone, and one bad frame must not freeze
the listener: a window whose face, audio features or raw audio is non-finite or absurd (further than
:data:`INPUT_BOUND_STDS` train standard deviations from the train mean; raw samples beyond
:data:`MAX_AUDIO_AMPLITUDE`) is rejected with :class:`RejectedInput`, naming the frame and the
coefficient, before anything changes; a denoiser that returns a non-finite value raises
:class:`NonFiniteOutput` and the noise generators are rewound. Either way the conversation's state is
exactly what it was, so the next good window continues the same reactions as if the bad one had never
been sent; a non-finite reaction is never returned.

Audio. :meth:`~OnlineReactionGenerator.step` takes either precomputed per-frame audio features or the
raw 16 kHz speaker audio of the new frames; raw audio is appended to a bounded rolling buffer (the
encoder's left context plus one chunk) and encoded with :func:`reactdiff.audio.encode_causal_window`,
which gives the same features as encoding the whole signal offline.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from reactdiff import layout, reference
from reactdiff.audio import AudioEncoder, encode_causal_window
from reactdiff.conditions import Conditions
from reactdiff.features import NormStats
from reactdiff.noise import SIGMA_DATA
from reactdiff.samplers import SOLVERS, Denoiser, sample

__all__ = [
    "INITIAL_PAST",
    "INPUT_BOUND_STDS",
    "MAX_AUDIO_AMPLITUDE",
    "NonFiniteOutput",
    "OnlineReactionGenerator",
    "RejectedInput",
    "derive_seed",
    "generate_clip",
    "generate_clips",
]

INITIAL_PAST = ("first_frame", "mean")
INPUT_BOUND_STDS = 1e3
"""Face coefficients and audio features further than this many train standard deviations from the train
mean are absurd (a tracker's 1e30). Generous on purpose: a blendshape that barely moves in the train
split has its std floored at 1e-3, and a real weight of 1 is then 1000 of them away."""
MAX_AUDIO_AMPLITUDE = 8.0
"""Raw samples are floats in [-1, 1]; beyond this is not float audio (int16 PCM: divide by 32768)."""


class RejectedInput(ValueError):
    """A window the generator refuses (non-finite or absurd input); its state is unchanged."""


class NonFiniteOutput(RuntimeError):
    """The denoiser returned a non-finite value; the generator's state (noise included) is unchanged."""


def _first_bad(values: np.ndarray, bound: float) -> tuple[int, ...] | None:
    """Index of the first non-finite value, or of one whose magnitude exceeds ``bound``; ``None`` if none."""
    bad = ~np.isfinite(values) | (np.abs(np.nan_to_num(values, nan=0.0)) > bound)
    return tuple(int(i) for i in np.argwhere(bad)[0]) if bad.any() else None


def derive_seed(global_seed: int, key: str) -> int:
    """A seed in ``[0, 2**63)`` derived from ``global_seed`` and ``key`` (e.g. a session id).

    Uses SHA-256 of ``"<global_seed>:<key>"``, so it is the same in every process and on every machine
    (Python's ``hash`` of a string is salted per process), and different keys give unrelated seeds.
    """
    digest = hashlib.sha256(f"{int(global_seed)}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a valid int64 / torch / numpy seed


def _default_device(denoiser: Denoiser) -> torch.device:
    if isinstance(denoiser, nn.Module):
        param = next(denoiser.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class OnlineReactionGenerator:
    """Streams M listener reactions to a live speaker, ``w`` frames at a time.

    ``denoiser``: the EDM denoiser contract ``(x [B, w, 58], sigma [B], cond: Conditions) -> [B, w, 58]``
    (a :class:`reactdiff.model.Denoiser`, or any callable following it). An ``nn.Module`` is switched to
    eval mode (dropout off) and moved to ``device``; ``device=None`` keeps a module where its parameters
    are, otherwise picks CUDA when available. ``stats``: the train-split normalisation; the model works in
    its space, inputs and outputs are in FaceVerse units. ``encoder``: the audio encoder the model was
    trained with, needed only to feed raw audio to :meth:`step`.

    Usage::

        gen = OnlineReactionGenerator(denoiser, stats, samples=10, encoder=build_encoder("logmel"))
        gen.reset(listener_start)            # [58] FaceVerse units, or None for the train mean
        while conversation:
            reactions = gen.step(face_16, audio_16)   # [16, 58], [16 * 640] samples -> [10, 16, 58]
    """

    def __init__(
        self,
        denoiser: Denoiser,
        stats: NormStats,
        *,
        window: int = 16,
        samples: int = 10,
        steps: int = 50,
        solver: str = "sde",
        eta: float = 1.0,
        guidance_scale: float = 1.0,
        guidance_interval: tuple[float, float] | None = None,
        seed: int = 0,
        device: torch.device | str | None = None,
        encoder: AudioEncoder | None = None,
        initial_past: str = "first_frame",
        clip_expression: bool = True,
        streams: int = 1,
    ) -> None:
        if window < 1 or samples < 1 or steps < 1 or streams < 1:
            raise ValueError(
                "window, samples, steps and streams must be >= 1, got "
                f"{window}, {samples}, {steps}, {streams}"
            )
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
        if not (math.isfinite(guidance_scale) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"guidance_scale and eta must be finite (eta >= 0), got {guidance_scale}, {eta}")
        if initial_past not in INITIAL_PAST:
            raise ValueError(f"initial_past must be one of {INITIAL_PAST}, got {initial_past!r}")
        self.audio_dim = int(len(stats.audio_mean))
        config = getattr(denoiser, "config", None)
        if config is not None:
            if config.frames != window:
                raise ValueError(
                    f"the denoiser was built for windows of {config.frames} frames, not {window}"
                )
            if config.audio_dim != self.audio_dim:
                raise ValueError(
                    f"the denoiser expects {config.audio_dim}-dim audio features but the normalisation "
                    f"stats have {self.audio_dim}: stats and checkpoint come from different feature runs"
                )
        if encoder is not None and encoder.dim != self.audio_dim:
            raise ValueError(
                f"encoder {encoder.name!r} gives {encoder.dim}-dim features, stats {self.audio_dim}"
            )

        self.device = torch.device(device) if device is not None else _default_device(denoiser)
        if isinstance(denoiser, nn.Module):
            denoiser = denoiser.to(self.device).eval()
        self.denoiser = denoiser
        self.stats = stats
        self.window = int(window)
        # Speaker frames before the window that the network also reads (0: the window only).
        self.speaker_history = int(getattr(config, "speaker_history", 0))
        self.samples = int(samples)
        self.steps = int(steps)
        self.solver = solver
        self.eta = float(eta)
        self.guidance_scale = float(guidance_scale)
        self.guidance_interval: tuple[float, float] | None = None
        if guidance_interval is not None:
            lo, hi = (float(v) for v in guidance_interval)
            self.guidance_interval = (lo, hi)
        self.seed = int(seed)
        self.seeds: list[int] = []
        self.encoder = encoder
        self.initial_past = initial_past
        self.clip_expression = bool(clip_expression)
        self.streams = int(streams)
        # Blendshape weights 0 and 1 in model space: normalisation is increasing, so clamping there is
        # clamping in FaceVerse units.
        expression = slice(0, layout.N_EXPRESSION)
        low, high = stats.normalise_face(np.stack([np.zeros(layout.N_COEFFS), np.ones(layout.N_COEFFS)]))
        self._expression_low = torch.from_numpy(low[expression]).to(self.device)
        self._expression_high = torch.from_numpy(high[expression]).to(self.device)
        self._hop = layout.MODEL_SAMPLE_RATE // layout.FPS
        if encoder is not None:
            if encoder.sample_rate % layout.FPS:
                raise ValueError(f"encoder sample rate {encoder.sample_rate} Hz is not a multiple of the fps")
            self._hop = encoder.sample_rate // layout.FPS
        self._generators = [torch.Generator(device="cpu") for _ in range(self.streams)]
        self._set_seeds(self.seed)
        self.reset()

    # -- state ---------------------------------------------------------------------------------------

    @property
    def frame(self) -> int:
        """Frames generated so far (the global index of the next frame)."""
        return self._frame

    def reset(
        self,
        listener_start: np.ndarray | None = None,
        seed: int | Sequence[int] | None = None,
    ) -> None:
        """Start a new conversation: frame counter 0, empty histories, noise generators re-seeded.

        ``listener_start``: ``[58]`` FaceVerse coefficients of the listener's state before the
        conversation (``[streams, 58]`` for several streams), the past of the first window under
        ``initial_past="first_frame"``; ``None`` means the train mean. Under ``initial_past="mean"`` the
        first past is the train mean whatever is given, as in training. ``seed``: ``None`` keeps the
        current seeds; an int seeds a single stream, or stream ``s`` of several with
        ``derive_seed(seed, "stream<s>")``; a sequence gives one seed per stream.
        """
        if seed is not None:
            self._set_seeds(seed)
        for generator, stream_seed in zip(self._generators, self.seeds, strict=True):
            generator.manual_seed(stream_seed)
        self._frame = 0
        w, m, streams = self.window, self.samples, self.streams
        start = torch.zeros(streams, layout.N_COEFFS)
        if listener_start is not None and self.initial_past == "first_frame":
            listener_start = np.asarray(listener_start, dtype=np.float32)
            expected = (layout.N_COEFFS,) if streams == 1 else (streams, layout.N_COEFFS)
            if listener_start.shape != expected:
                raise ValueError(f"listener_start must be {list(expected)}, got {list(listener_start.shape)}")
            start = torch.from_numpy(self.stats.normalise_face(listener_start)).reshape(streams, -1)
        # Model-space listener frames [frame - 2w, frame) of every row (stream-major: row s * M + i is
        # sample i of stream s); the frames before 0 are the initial past. Two windows are enough: a
        # window ending at frame + k - 1 (1 <= k <= w) has its past in [frame + k - 2w, frame + k - w).
        self._listener = (
            start.to(self.device)[:, None, None]
            .expand(streams, m, 2 * w, -1)
            .reshape(streams * m, 2 * w, layout.N_COEFFS)
        )
        # Sum of every generated model-space frame of each row: the listener's mean so far.
        self._generated_sum = torch.zeros(streams * m, layout.N_COEFFS, device=self.device)
        # Normalised speaker inputs of the last (up to) H + w frames: the network's speaker context, and
        # the frames that windows overlapping earlier ones need.
        self._speaker_face = torch.zeros(streams, 0, layout.N_COEFFS, device=self.device)
        self._speaker_audio = torch.zeros(streams, 0, self.audio_dim, device=self.device)
        # Rolling raw-audio buffer: samples [_audio_start, _audio_start + len(_audio)) of the stream.
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = 0

    def _set_seeds(self, seed: int | Sequence[int]) -> None:
        if isinstance(seed, (int, np.integer)):
            self.seed = int(seed)
            if self.streams == 1:
                self.seeds = [self.seed]
            else:
                self.seeds = [derive_seed(self.seed, f"stream{s}") for s in range(self.streams)]
            return
        seeds = [int(v) for v in seed]
        if len(seeds) != self.streams:
            raise ValueError(f"got {len(seeds)} seeds for {self.streams} streams")
        self.seeds = seeds

    # -- one window ----------------------------------------------------------------------------------

    def step(
        self,
        speaker_face: np.ndarray,
        speaker_audio: np.ndarray | None = None,
        *,
        audio_features: np.ndarray | None = None,
    ) -> np.ndarray:
        """Generate the reactions to the next ``k`` speaker frames: ``[M, k, 58]`` FaceVerse units.

        ``speaker_face``: ``[k, 58]`` FaceVerse coefficients of the next frames, normally a whole window
        (``k = w``). Give exactly one of ``speaker_audio`` (raw mono samples of these frames at the
        encoder's rate, ``k * 640`` at 16 kHz; encoded causally from the rolling buffer) and
        ``audio_features`` (``[k, A]`` raw per-frame features, normalised here).

        ``k < w`` is allowed once ``w`` frames exist in total (``frame + k >= w``): the window is then
        the ``w`` frames ending at the new last frame, ``h = frame + k - 1``; it overlaps the last
        ``w - k`` frames already generated (their speaker inputs come from the generator's history), its
        past is the ``w`` generated frames before its start, and only its ``k`` new frames are returned
        and kept; frames already returned are never changed. :func:`generate_clip` uses this to align the
        last window of a clip to the clip's end. A generator of several streams uses :meth:`step_streams`.
        """
        if self.streams != 1:
            raise ValueError(f"this generator runs {self.streams} streams: call step_streams")
        face = np.asarray(speaker_face, dtype=np.float32)
        k = self._check_window(face[None])
        if (speaker_audio is None) == (audio_features is None):
            raise ValueError("give exactly one of speaker_audio (raw samples) and audio_features")
        audio_state = (self._audio, self._audio_start)
        try:
            if audio_features is not None:
                feats = self._check_features(np.asarray(audio_features, dtype=np.float32)[None], k)[0]
                reactions = self._advance(face[None], feats[None])[0]
                self._skip_audio(k)
            else:
                feats = self._encode_audio(np.asarray(speaker_audio), k)
                reactions = self._advance(face[None], feats[None])[0]
        except Exception:
            self._audio, self._audio_start = audio_state  # a refused window leaves no trace
            raise
        return reactions

    def _step_single(self, speaker_face: np.ndarray, audio_features: np.ndarray) -> np.ndarray:
        """:meth:`step` on arrays with a leading stream axis of 1, as :func:`generate_clip` steps."""
        return self.step(speaker_face[0], audio_features=audio_features[0])[None]

    def step_streams(self, speaker_face: np.ndarray, audio_features: np.ndarray) -> np.ndarray:
        """:meth:`step` for all streams at once, from features.

        ``[S, k, 58]`` face and ``[S, k, A]`` raw audio features -> ``[S, M, k, 58]`` FaceVerse units.
        """
        face = np.asarray(speaker_face, dtype=np.float32)
        k = self._check_window(face)
        feats = self._check_features(np.asarray(audio_features, dtype=np.float32), k)
        reactions = self._advance(face, feats)
        self._skip_audio(k)
        return reactions

    def _check_window(self, face: np.ndarray) -> int:
        w, streams = self.window, self.streams
        if (
            face.ndim != 3
            or face.shape[0] != streams
            or face.shape[2] != layout.N_COEFFS
            or not 1 <= face.shape[1] <= w
        ):
            shape = f"[k, {layout.N_COEFFS}]" if streams == 1 else f"[{streams}, k, {layout.N_COEFFS}]"
            got = face.shape[1:] if streams == 1 and face.shape[0] == 1 else face.shape
            raise ValueError(f"speaker_face must be {shape} with 1 <= k <= {w}, got {got}")
        k = face.shape[1]
        if self._frame + k < w:
            raise ValueError(
                f"the first window needs {w} speaker frames; {self._frame} were given before and {k} now"
            )
        return k

    def _check_features(self, feats: np.ndarray, k: int) -> np.ndarray:
        expected = (self.streams, k, self.audio_dim)
        if feats.shape != expected:
            shown = expected[1:] if self.streams == 1 else expected
            got = feats.shape[1:] if self.streams == 1 and feats.shape[:1] == (1,) else feats.shape
            raise ValueError(f"audio_features must be {list(shown)}, got {list(got)}")
        return feats

    def _advance(self, face: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Denoise the window ending ``k`` frames ahead for every row: ``[S, M, k, 58]`` FaceVerse units."""
        w, m, streams = self.window, self.samples, self.streams
        k = face.shape[1]
        face_z, audio_z = self.stats.normalise_face(face), self.stats.normalise_audio(feats)
        self._reject_absurd(face, face_z / SIGMA_DATA, "speaker_face", reference.coefficient_names())
        self._reject_absurd(feats, audio_z, "audio features", None)
        face_t = torch.from_numpy(face_z).to(self.device)
        audio_t = torch.from_numpy(audio_z).to(self.device)
        context = self.speaker_history + w
        window_face = _left_pad(torch.cat([self._speaker_face, face_t], dim=1)[:, -context:], context)
        window_audio = _left_pad(torch.cat([self._speaker_audio, audio_t], dim=1)[:, -context:], context)
        past = self._listener[:, k : k + w]
        h = self._frame + k - 1
        # The listener's mean over frames [0, start) of the window (as in training: the past's mean
        # when the window starts at or before the conversation's first frame).
        start = self._frame + k - w
        if start > 0:
            overlap = self._listener[:, 2 * w - (w - k) :].sum(dim=1) if k < w else 0
            history = (self._generated_sum - overlap) / start
        else:
            history = past.mean(dim=1)

        # The M samples of a stream share its speaker rows and differ in their past.
        def per_row(x: torch.Tensor) -> torch.Tensor:
            return x[:, None].expand(streams, m, *x.shape[1:]).reshape(streams * m, *x.shape[1:])

        cond = Conditions.create(per_row(window_face), per_row(window_audio), past, h, history=history)
        noise_states = [g.get_state() for g in self._generators]
        with torch.inference_mode():
            x = sample(
                self.denoiser,
                (streams * m, w, layout.N_COEFFS),
                cond,
                steps=self.steps,
                solver=self.solver,
                eta=self.eta,
                guidance_scale=self.guidance_scale,
                guidance_interval=self.guidance_interval,
                generator=self._generators[0] if streams == 1 else self._generators,
                device=self.device,
            )
        new = x[:, w - k :]
        if not bool(torch.isfinite(new).all()):
            for generator, state in zip(self._generators, noise_states, strict=True):
                generator.set_state(state)
            raise NonFiniteOutput(
                f"the denoiser returned non-finite values for the window ending at frame {h}; nothing was "
                "returned and the conversation's state is unchanged (check the checkpoint: a model that "
                "gives NaN on finite inputs has NaN or inf weights)"
            )
        if self.clip_expression:
            expression = new[..., : layout.N_EXPRESSION].clamp(self._expression_low, self._expression_high)
            new = torch.cat([expression, new[..., layout.N_EXPRESSION :]], dim=-1)
        self._listener = torch.cat([self._listener, new], dim=1)[:, -2 * w :]
        self._generated_sum = self._generated_sum + new.sum(dim=1)
        self._speaker_face = window_face
        self._speaker_audio = window_audio
        self._frame += k
        out = np.asarray(self.stats.denormalise_face(new.float().cpu().numpy()), dtype=np.float32)
        if self.clip_expression:  # the affine round trip can leave 0 and 1 off by a rounding error
            np.clip(out[..., : layout.N_EXPRESSION], 0.0, 1.0, out=out[..., : layout.N_EXPRESSION])
        return out.reshape(streams, m, k, layout.N_COEFFS)

    def _reject_absurd(self, raw: np.ndarray, z: np.ndarray, what: str, names: Sequence[str] | None) -> None:
        """:class:`RejectedInput` naming the first non-finite or absurd value of ``raw`` ``[S, k, D]``."""
        where = _first_bad(z, INPUT_BOUND_STDS)
        if where is None:
            return
        stream, frame, dim = where
        name = f"{names[dim]!r} (index {dim})" if names else f"dimension {dim}"
        at = f"stream {stream}, " if self.streams > 1 else ""
        value = float(raw[where])
        why = "not finite" if not np.isfinite(value) else f"over {INPUT_BOUND_STDS:g} train stds off the mean"
        raise RejectedInput(
            f"{what}: {at}frame {frame} of the window, {name} is {value:.6g}, {why}; the window is rejected "
            "and the conversation's state is unchanged: send the next window"
        )

    # -- audio ---------------------------------------------------------------------------------------

    def _audio_needed_from(self, frame_start: int) -> int:
        """First absolute sample the causal encoding of frames from ``frame_start`` on can need."""
        assert self.encoder is not None
        chunk = int(getattr(self.encoder, "chunk_frames", 1))
        first_chunk_end = (frame_start // chunk + 1) * chunk * self._hop
        context = math.ceil(self.encoder.left_context_s * self.encoder.sample_rate - 1e-6)
        return max(0, first_chunk_end - context)

    def _skip_audio(self, k: int) -> None:
        """Frames given as features: the raw-audio stream now has a gap up to their end."""
        self._audio = np.zeros(0, dtype=np.float32)
        self._audio_start = (self._frame + k) * self._hop

    def _encode_audio(self, signal: np.ndarray, k: int) -> np.ndarray:
        """Append ``k`` frames of raw audio to the buffer and encode them: ``[k, A]`` raw features."""
        if self.encoder is None:
            raise ValueError(
                "raw speaker_audio needs the generator's encoder; pass encoder= or audio_features"
            )
        if signal.ndim != 1 or signal.shape[0] != k * self._hop:
            raise ValueError(
                f"speaker_audio must be mono [{k * self._hop}] samples ({k} frames at "
                f"{self.encoder.sample_rate} Hz), got shape {signal.shape}"
            )
        finite = np.isfinite(signal)
        if not finite.all() or np.abs(signal).max(initial=0.0) > MAX_AUDIO_AMPLITUDE:
            i = int(np.argmin(finite)) if not finite.all() else int(np.argmax(np.abs(signal)))
            raise RejectedInput(
                f"speaker_audio: sample {i} of the window is {float(signal[i]):.6g}; raw audio must be "
                "finite floats in [-1, 1] (int16 PCM: divide by 32768); the window is rejected and the "
                "conversation's state is unchanged: send the next window"
            )
        if self._audio_start > self._audio_needed_from(self._frame):
            raise ValueError(
                "raw speaker_audio after steps given audio_features: the encoder lacks the audio of the "
                "preceding frames (its left context); feed one kind of audio input per conversation"
            )
        self._audio = np.concatenate([self._audio, signal.astype(np.float32, copy=False)])
        feats = encode_causal_window(self.encoder, self._audio, self._frame, k, self._audio_start)
        # Later windows only need audio from the next frame's left context on: keep no more than that.
        keep_from = min(self._audio_needed_from(self._frame + k), self._audio_start + len(self._audio))
        if keep_from > self._audio_start:
            self._audio = self._audio[keep_from - self._audio_start :].copy()
            self._audio_start = keep_from
        return feats

    @property
    def audio_buffer_samples(self) -> int:
        """Raw audio samples held in the rolling buffer (bounded by the encoder's context + one chunk)."""
        return int(len(self._audio))


def generate_clip(
    generator: OnlineReactionGenerator,
    speaker_face: np.ndarray,
    audio_features: np.ndarray,
    listener_start: np.ndarray | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """Run ``generator`` online over a whole clip: ``[T, 58]`` face, ``[T, A]`` features -> ``[M, T, 58]``.

    The generator is reset (``listener_start``, ``seed``), then stepped window by window through
    :meth:`OnlineReactionGenerator.step`, so the result is what a live run over the clip would produce.
    Every frame is covered whatever ``T % w``:

    - ``T // w`` full windows ``[i w, (i + 1) w)`` come first, each with ``h = (i + 1) w - 1``;
    - when ``r = T % w > 0`` (and ``T >= w``), one more window is aligned to the clip end: frames
      ``[T - w, T)`` with ``h = T - 1``; its past window is the ``w`` frames ``[T - 2w, T - w)`` generated
      before it (the initial past for frames before 0), and only its last ``r`` frames, the ones not
      generated yet, are kept; earlier frames are not overwritten;
    - a clip shorter than one window (``T < w``) is padded to ``w`` frames by repeating its last speaker
      frame (the speaker holding still), generated as one window (``h = w - 1``) and cut to ``T`` frames.
      Each network evaluation is speaker-causal, but the solver denoises the window's frames jointly, so
      the padding does reach the kept frames through later solver steps: an approximation, needed only
      for clips shorter than 0.64 s (corpus clips have 750 frames).
    """
    face = np.asarray(speaker_face, dtype=np.float32)
    feats = np.asarray(audio_features, dtype=np.float32)
    if face.ndim != 2 or feats.ndim != 2 or face.shape[0] != feats.shape[0]:
        raise ValueError(
            f"speaker_face [T, 58] and audio_features [T, A] must align, got {face.shape}, {feats.shape}"
        )
    if generator.streams != 1:
        raise ValueError(f"the generator runs {generator.streams} streams: use generate_clips")
    start = None if listener_start is None else np.asarray(listener_start, dtype=np.float32)
    return _generate(generator, face[None], feats[None], start, seed, generator._step_single)[0]


def generate_clips(
    generator: OnlineReactionGenerator,
    speaker_faces: np.ndarray,
    audio_features: np.ndarray,
    listener_starts: np.ndarray | None = None,
    seeds: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`generate_clip` for ``S = generator.streams`` clips of equal length run in lockstep.

    ``speaker_faces [S, T, 58]``, ``audio_features [S, T, A]``, ``listener_starts [S, 58]`` (or
    ``None``), ``seeds``: one per clip -> ``[S, M, T, 58]``. Clip ``s`` gets the windows, pasts and noise
    that :func:`generate_clip` with ``seeds[s]`` gives it (to float rounding); only the batch is larger.
    """
    faces = np.asarray(speaker_faces, dtype=np.float32)
    feats = np.asarray(audio_features, dtype=np.float32)
    streams = generator.streams
    if faces.ndim != 3 or feats.ndim != 3 or faces.shape[:2] != feats.shape[:2] or len(faces) != streams:
        raise ValueError(
            f"speaker_faces [{streams}, T, 58] and audio_features [{streams}, T, A] must align with the "
            f"generator's {streams} streams, got {faces.shape}, {feats.shape}"
        )
    return _generate(generator, faces, feats, listener_starts, seeds, generator.step_streams)


def _generate(generator, faces, feats, starts, seed, step) -> np.ndarray:
    generator.reset(starts, seed)
    streams, total, _ = faces.shape
    w, m = generator.window, generator.samples
    out = np.full((streams, m, total, layout.N_COEFFS), np.nan, dtype=np.float32)
    if total == 0:
        return out
    if total < w:
        pad = w - total
        face_w = np.concatenate([faces, np.repeat(faces[:, -1:], pad, axis=1)], axis=1)
        feats_w = np.concatenate([feats, np.repeat(feats[:, -1:], pad, axis=1)], axis=1)
        return step(face_w, feats_w)[:, :, :total]
    for start in range(0, total - w + 1, w):
        out[:, :, start : start + w] = step(faces[:, start : start + w], feats[:, start : start + w])
    done = generator.frame
    if done < total:
        out[:, :, done:] = step(faces[:, done:], feats[:, done:])
    return out


def _left_pad(frames: torch.Tensor, length: int) -> torch.Tensor:
    """``[S, n, C]`` -> ``[S, length, C]`` with the first frame repeated in front (before the conversation
    starts, the speaker context is its first frame, as in the training windows)."""
    missing = length - frames.shape[1]
    if missing <= 0:
        return frames
    return torch.cat([frames[:, :1].expand(-1, missing, -1), frames], dim=1)
