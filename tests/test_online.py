"""Tests of the online generator: shapes, de-normalisation, per-sample pasts, frame indices, batching,
coverage of whole clips, streaming causality, causal audio encoding, determinism and seed derivation.

Most tests run a small randomly initialised demo network (its zero-initialised output layers perturbed so
that the speaker actually influences the output); closed-form toy denoisers pin down the data flow.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import Tensor

from reactdiff.audio import LogMelProsodyEncoder
from reactdiff.conditions import Conditions
from reactdiff.features import NormStats
from reactdiff.layout import MODEL_SAMPLE_RATE, N_COEFFS
from reactdiff.model import build_denoiser
from reactdiff.noise import SIGMA_DATA
from reactdiff.online import (
    NonFiniteOutput,
    OnlineReactionGenerator,
    RejectedInput,
    derive_seed,
    generate_clip,
    generate_clips,
)
from reactdiff.samplers import CountingDenoiser

W = 16
A = 86  # LogMelProsodyEncoder's default dimension
HOP = MODEL_SAMPLE_RATE // 25
# The random stats below put expression weights far outside [0, 1]; most tests follow exact values through
# the generator, so they switch the range clamp off (its own tests are at the end).
Unclipped = functools.partial(OnlineReactionGenerator, clip_expression=False)


@pytest.fixture(scope="module")
def stats() -> NormStats:
    rng = np.random.default_rng(1)
    return NormStats(
        face_mean=rng.normal(size=N_COEFFS).astype(np.float32),
        face_std=rng.uniform(0.2, 2.0, size=N_COEFFS).astype(np.float32),
        audio_mean=rng.normal(size=A).astype(np.float32),
        audio_std=rng.uniform(0.5, 3.0, size=A).astype(np.float32),
    )


@pytest.fixture(scope="module")
def denoiser(demo_denoiser):
    return demo_denoiser


def speaker(frames: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random speaker face ``[frames, 58]`` and raw audio features ``[frames, A]``."""
    rng = np.random.default_rng(seed)
    face = rng.normal(size=(frames, N_COEFFS)).astype(np.float32)
    return face, rng.normal(size=(frames, A)).astype(np.float32)


class PastPlusOffset:
    """Toy denoiser: the clean estimate is the row's own past window plus a per-row constant ``offset``."""

    def __init__(self, offsets: list[float]) -> None:
        self.offsets = torch.tensor(offsets)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditions) -> Tensor:
        return cond.past + self.offsets.to(x)[:, None, None]


class Recording:
    """Wraps a denoiser and records, per call, the batch size, ``h`` and the conditions it saw."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.frame_index: list[Tensor] = []
        self.past: list[Tensor] = []
        self.audio: list[Tensor] = []
        self.face: list[Tensor] = []
        self.history: list[Tensor] = []
        if hasattr(inner, "config"):
            self.config = inner.config

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditions) -> Tensor:
        self.batches.append(x.shape[0])
        self.face.append(cond.speaker_face.clone())
        self.frame_index.append(cond.frame_index.clone())
        self.past.append(cond.past.clone())
        self.audio.append(cond.speaker_audio.clone())
        self.history.append(cond.listener_history.clone())
        return self.inner(x, sigma, cond)


# ---------------------------------------------------------------------------------------------------------


def test_step_shapes_and_state(denoiser, stats):
    gen = Unclipped(denoiser, stats, samples=3, steps=3)
    face, feats = speaker(2 * W)
    first = gen.step(face[:W], audio_features=feats[:W])
    assert first.shape == (3, W, N_COEFFS) and first.dtype == np.float32
    assert np.isfinite(first).all()
    assert gen.frame == W
    second = gen.step(face[W:], audio_features=feats[W:])
    assert second.shape == (3, W, N_COEFFS) and gen.frame == 2 * W
    assert not np.allclose(first[0], first[1])  # M different samples


def test_output_is_denormalised_by_hand(stats):
    # A denoiser whose clean estimate is 0.5 everywhere: the last solver step returns it exactly, and in
    # model space (std SIGMA_DATA = 0.5) 0.5 is one train std above the mean.
    def constant(x, sigma, cond):
        return torch.full_like(x, 0.5)

    gen = Unclipped(constant, stats, samples=2, steps=4)
    face, feats = speaker(W)
    out = gen.step(face, audio_features=feats)
    expected = stats.face_mean + stats.face_std * (0.5 / SIGMA_DATA)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), rtol=1e-5, atol=1e-5)


def test_initial_past_is_listener_start(stats):
    start = np.random.default_rng(3).normal(size=N_COEFFS).astype(np.float32) * stats.face_std + 1.0
    face, feats = speaker(2 * W)
    copy_past = PastPlusOffset([0.0, 0.0])

    gen = Unclipped(copy_past, stats, samples=2, steps=5)
    gen.reset(start)
    for k in range(2):  # the past is carried forward window after window
        out = gen.step(face[k * W : (k + 1) * W], audio_features=feats[k * W : (k + 1) * W])
        np.testing.assert_allclose(out, np.broadcast_to(start, out.shape), rtol=1e-5, atol=1e-5)

    gen.reset(None)  # no starting state: the train mean
    out = gen.step(face[:W], audio_features=feats[:W])
    np.testing.assert_allclose(out, np.broadcast_to(stats.face_mean, out.shape), rtol=1e-5, atol=1e-5)

    mean_past = Unclipped(copy_past, stats, samples=2, steps=5, initial_past="mean")
    mean_past.reset(start)  # "mean" ignores the start, as training with initial_past="mean" did
    out = mean_past.step(face[:W], audio_features=feats[:W])
    np.testing.assert_allclose(out, np.broadcast_to(stats.face_mean, out.shape), rtol=1e-5, atol=1e-5)


def test_each_sample_conditioned_on_its_own_past(stats):
    offsets = [0.0, 0.1, -0.2, 0.3]
    gen = Unclipped(PastPlusOffset(offsets), stats, samples=4, steps=3)
    start = stats.face_mean + 0.5 * stats.face_std
    gen.reset(start)
    face, feats = speaker(5 * W)
    start_model = stats.normalise_face(start)
    for k in range(1, 6):
        out = gen.step(face[(k - 1) * W : k * W], audio_features=feats[(k - 1) * W : k * W])
        model = stats.normalise_face(out)  # [M, w, 58]
        # Row m drifts by its own offset per window: k windows in, it sits k offsets from the start.
        expected = start_model + k * np.asarray(offsets, np.float32)[:, None, None]
        np.testing.assert_allclose(model, np.broadcast_to(expected, model.shape), atol=1e-4)


def test_end_aligned_window_past_comes_from_generated_frames(stats):
    # T = 40: windows [0, 16), [16, 32), then [24, 40) with past [8, 24) = 8 frames of window 1 (one
    # offset) and 8 of window 2 (two offsets); its kept frames 32..39 copy past frames 16..23, plus one.
    offsets = [0.2, -0.1]
    gen = Unclipped(PastPlusOffset(offsets), stats, samples=2, steps=2)
    out = stats.normalise_face(generate_clip(gen, *speaker(40)))
    c = np.asarray(offsets, np.float32)[:, None, None]
    for lo, hi, level in [(0, 16, 1), (16, 32, 2), (32, 40, 3)]:
        np.testing.assert_allclose(out[:, lo:hi], np.broadcast_to(level * c, out[:, lo:hi].shape), atol=1e-5)


def test_history_is_the_mean_of_the_generated_frames_before_the_window(stats):
    # Row m's k-th window is the start plus k offsets (PastPlusOffset), so the listener's mean over the
    # frames before window k is start + offset * (1 + ... + k - 1) / (k - 1); the first window has no
    # generated frames before it and sees its past's mean, the start. T = 40 ends with the window
    # [24, 40), whose history is the mean of frames [0, 24): 16 frames at one offset, 8 at two.
    offsets = [0.2, -0.1]
    rec = Recording(PastPlusOffset(offsets))
    gen = Unclipped(rec, stats, samples=2, steps=1)
    start = stats.face_mean + 0.5 * stats.face_std
    gen.reset(start)
    start_model = torch.from_numpy(stats.normalise_face(start))
    c = torch.tensor(offsets)[:, None]
    face, feats = speaker(40)
    generate_clip(gen, face, feats, start)
    expected = [start_model + 0 * c, start_model + 1 * c, start_model + (16 * 1 + 8 * 2) / 24 * c]
    assert len(rec.history) == 3
    for seen, want in zip(rec.history, expected, strict=True):
        torch.testing.assert_close(seen, want.expand_as(seen).float(), atol=1e-5, rtol=1e-5)


def test_frame_index_batch_and_past_passed_to_the_denoiser(denoiser, stats):
    rec = Recording(denoiser)
    gen = Unclipped(rec, stats, samples=3, steps=2)
    out = generate_clip(gen, *speaker(40), listener_start=stats.face_mean + stats.face_std)
    # Windows end at frames 15 and 31, then the end-aligned one at T - 1 = 39; two solver steps each.
    assert [int(h[0]) for h in rec.frame_index] == [15, 15, 31, 31, 39, 39]
    assert all(bool((h == h[0]).all()) for h in rec.frame_index)
    assert rec.batches == [3] * 6  # the M samples are one batch
    model = stats.normalise_face(out)
    np.testing.assert_allclose(rec.past[0].numpy(), np.full((3, W, N_COEFFS), SIGMA_DATA), atol=1e-5)
    np.testing.assert_allclose(rec.past[2].numpy(), model[:, 0:16], atol=1e-5)
    np.testing.assert_allclose(rec.past[4].numpy(), model[:, 8:24], atol=1e-5)


def test_speaker_history_is_the_frames_before_each_window(stats):
    """A network that reads H speaker frames before the window gets them online exactly as the training
    windows give them (reactdiff.windows): the frames before the conversation are its first frame."""
    history = 5
    torch.manual_seed(0)
    rec = Recording(build_denoiser("demo", audio_dim=A, speaker_history=history).eval())
    gen = Unclipped(rec, stats, samples=2, steps=1)
    face, feats = speaker(40)
    generate_clip(gen, face, feats)
    model_face = stats.normalise_face(face)
    for call, end in zip(rec.face, (15, 31, 39), strict=True):
        frames = np.maximum(np.arange(end - W - history + 1, end + 1), 0)
        assert call.shape == (2, history + W, N_COEFFS)
        np.testing.assert_allclose(call[0].numpy(), model_face[frames], atol=1e-5)


@pytest.mark.parametrize(
    ("guidance", "interval", "guided_steps"), [(1.0, None, 0), (2.0, None, 5), (2.0, (0.0, 1.0), 2)]
)
def test_one_denoiser_call_per_solver_step(denoiser, stats, guidance, interval, guided_steps):
    counter = CountingDenoiser(denoiser)
    gen = Unclipped(counter, stats, samples=4, steps=5, guidance_scale=guidance, guidance_interval=interval)
    face, feats = speaker(W)
    gen.step(face, audio_features=feats)
    assert counter.calls == 5
    # Guided steps: M conditional + M unconditional rows. Of the 5 Karras levels (80, 19.8, 3.46, 0.34,
    # 0.01), two lie in [0, 1].
    assert counter.rows == 5 * 4 + guided_steps * 4


@pytest.mark.parametrize("frames", [750, 40, 16, 17, 5])
def test_whole_clip_is_covered(denoiser, stats, frames):
    gen = Unclipped(denoiser, stats, samples=2, steps=1, seed=7)
    face, feats = speaker(frames, seed=frames)
    out = generate_clip(gen, face, feats)
    assert out.shape == (2, frames, N_COEFFS)
    assert not np.isnan(out).any() and np.isfinite(out).all()
    assert gen.frame == max(frames, W)
    # The full windows are exactly what streaming them alone gives: the end-aligned window only adds.
    full = (frames // W) * W
    if full:
        gen.reset(seed=7)
        streamed = np.concatenate(
            [gen.step(face[s : s + W], audio_features=feats[s : s + W]) for s in range(0, full, W)], axis=1
        )
        np.testing.assert_array_equal(out[:, :full], streamed)


def test_short_clip_is_one_padded_window(denoiser, stats):
    # T < w: one window over the speaker held still after the clip's last frame, h = w - 1, cut to T.
    rec = Recording(denoiser)
    gen = Unclipped(rec, stats, samples=2, steps=3, seed=1)
    face, feats = speaker(5, seed=4)
    short = generate_clip(gen, face, feats)
    assert short.shape == (2, 5, N_COEFFS)
    assert [int(h[0]) for h in rec.frame_index] == [W - 1] * 3
    padded = generate_clip(
        gen,
        np.concatenate([face, np.repeat(face[-1:], W - 5, 0)]),
        np.pad(feats, ((0, W - 5), (0, 0)), mode="edge"),
    )
    np.testing.assert_array_equal(short, padded[:, :5])


def test_streaming_causality(denoiser, stats):
    face, feats = speaker(4 * W, seed=2)
    gen = Unclipped(denoiser, stats, samples=3, steps=4, solver="sde", seed=11)

    def run(face: np.ndarray, feats: np.ndarray) -> list[np.ndarray]:
        gen.reset(seed=11)
        return [gen.step(face[s : s + W], audio_features=feats[s : s + W]) for s in range(0, 4 * W, W)]

    base = run(face, feats)
    for change_face, change_audio in [(True, False), (False, True)]:
        face2, feats2 = face.copy(), feats.copy()
        if change_face:
            face2[2 * W :] += 1.0
        if change_audio:
            feats2[2 * W :] *= -1.0
        changed = run(face2, feats2)
        for k in range(2):  # windows 1..2 saw nothing of the change
            np.testing.assert_array_equal(changed[k], base[k])
        assert not np.allclose(changed[2], base[2])
        assert not np.allclose(changed[3], base[3])


def test_raw_audio_path_equals_precomputed_features(denoiser, stats):
    encoder = LogMelProsodyEncoder()
    frames = 40
    rng = np.random.default_rng(5)
    t = np.arange(frames * HOP) / MODEL_SAMPLE_RATE
    signal = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 2 * t)) + 0.05 * rng.normal(
        size=t.size
    )
    signal = signal.astype(np.float32)
    offline = encoder.encode(signal, frames)  # [40, 86] from the whole signal
    face = speaker(frames, seed=6)[0]

    feature_gen = Unclipped(denoiser, stats, samples=2, steps=3, seed=3)
    by_features = generate_clip(feature_gen, face, offline)

    rec = Recording(denoiser)
    raw_gen = Unclipped(rec, stats, samples=2, steps=3, seed=3, encoder=encoder)
    context = int(np.ceil(encoder.left_context_s * MODEL_SAMPLE_RATE))
    parts = []
    for lo, hi in [(0, 16), (16, 32), (32, 40)]:  # the same windows generate_clip runs
        parts.append(raw_gen.step(face[lo:hi], signal[lo * HOP : hi * HOP]))
        assert raw_gen.audio_buffer_samples <= context  # the rolling buffer stays bounded
    by_audio = np.concatenate(parts, axis=1)

    np.testing.assert_array_equal(by_audio, by_features)
    # What the network saw is the offline encoding of each window (normalised), bit for bit.
    normalised = stats.normalise_audio(offline)
    for call, (lo, hi) in zip([0, 3, 6], [(0, 16), (16, 32), (24, 40)], strict=True):
        np.testing.assert_array_equal(rec.audio[call][0].numpy(), normalised[lo:hi])


def test_raw_audio_needs_its_left_context(denoiser, stats):
    gen = Unclipped(denoiser, stats, samples=1, steps=1, encoder=LogMelProsodyEncoder())
    face, feats = speaker(2 * W)
    gen.step(face[:W], audio_features=feats[:W])
    with pytest.raises(ValueError, match="left context"):
        gen.step(face[W:], np.zeros(W * HOP, np.float32))


def test_input_validation(denoiser, stats):
    gen = Unclipped(denoiser, stats, samples=1, steps=1)
    face, feats = speaker(W)
    with pytest.raises(ValueError, match="first window"):
        gen.step(face[:8], audio_features=feats[:8])
    with pytest.raises(ValueError, match="exactly one"):
        gen.step(face)
    with pytest.raises(ValueError, match="audio_features"):
        gen.step(face, audio_features=feats[:, :10])
    with pytest.raises(ValueError, match="encoder"):
        gen.step(face, np.zeros(W * HOP, np.float32))
    with pytest.raises(ValueError, match="windows of 16"):
        Unclipped(denoiser, stats, window=8)
    with pytest.raises(ValueError, match="initial_past"):
        Unclipped(denoiser, stats, initial_past="zeros")


def _conversation(denoiser, stats, windows, *, faulty=None, encoder=None, audio=None):
    """Reactions to ``windows`` good windows; ``faulty(gen)`` is called (and must raise) after the first."""
    gen = Unclipped(denoiser, stats, samples=2, steps=3, seed=7, encoder=encoder)
    face, feats = speaker(windows * W, seed=11)
    out = []
    for i in range(windows):
        lo, hi = i * W, (i + 1) * W
        if audio is None:
            out.append(gen.step(face[lo:hi], audio_features=feats[lo:hi]))
        else:
            out.append(gen.step(face[lo:hi], audio[lo * HOP : hi * HOP]))
        if i == 0 and faulty is not None:
            faulty(gen, face[hi : hi + W].copy(), feats[hi : hi + W].copy())
    return np.concatenate(out, axis=1), gen


@pytest.mark.parametrize(
    "field, frame, dim, value, message",
    [
        (
            "face",
            3,
            24,
            np.nan,
            r"speaker_face: frame 3 of the window, 'jawOpen' \(index 24\) is nan, not finite",
        ),
        ("face", 0, 57, np.inf, r"frame 0 of the window, 'tz' \(index 57\) is inf, not finite"),
        ("face", 15, 0, 1e30, r"'browDownLeft' \(index 0\) is 1e\+30, over 1000 train stds off the mean"),
        ("audio", 7, 5, -np.inf, r"audio features: frame 7 of the window, dimension 5 is -inf, not finite"),
    ],
)
def test_a_bad_window_is_rejected_and_the_conversation_goes_on_as_if_it_was_never_sent(
    denoiser, stats, field, frame, dim, value, message
):
    def send_bad(gen, face, feats):
        (face if field == "face" else feats)[frame, dim] = value
        with pytest.raises(RejectedInput, match=message):
            gen.step(face, audio_features=feats)

    clean, _ = _conversation(denoiser, stats, 3)
    survived, gen = _conversation(denoiser, stats, 3, faulty=send_bad)
    np.testing.assert_array_equal(survived, clean)  # same reactions: state and noise untouched
    assert gen.frame == 3 * W and np.isfinite(survived).all()


def test_bad_raw_audio_is_rejected_before_it_reaches_the_rolling_buffer(denoiser, stats):
    encoder = LogMelProsodyEncoder()
    audio = (0.1 * np.random.default_rng(2).normal(size=3 * W * HOP)).astype(np.float32)

    def send_bad(gen, face, feats):
        buffered = gen.audio_buffer_samples
        for bad, shown in ((np.nan, "nan"), (32767.0, "32767")):
            signal = audio[W * HOP : 2 * W * HOP].copy()
            signal[100] = bad
            with pytest.raises(RejectedInput, match=f"speaker_audio: sample 100 of the window is {shown}"):
                gen.step(face, signal)
        assert gen.audio_buffer_samples == buffered

    clean, _ = _conversation(denoiser, stats, 3, encoder=encoder, audio=audio)
    survived, _ = _conversation(denoiser, stats, 3, faulty=send_bad, encoder=encoder, audio=audio)
    np.testing.assert_array_equal(survived, clean)


class NaNAfter:
    """Adversarial denoiser: a real network until ``broken`` is set, then NaN everywhere."""

    def __init__(self, inner) -> None:
        self.inner, self.config, self.broken = inner, inner.config, False

    def __call__(self, x: Tensor, sigma: Tensor, cond: Conditions) -> Tensor:
        out = self.inner(x, sigma, cond)
        return torch.full_like(out, float("nan")) if self.broken else out


def test_a_non_finite_output_is_never_returned_and_rewinds_the_noise(denoiser, stats):
    adversary = NaNAfter(denoiser)

    def break_once(gen, face, feats):
        adversary.broken = True
        with pytest.raises(NonFiniteOutput, match="window ending at frame 31; nothing was returned"):
            gen.step(face, audio_features=feats)
        adversary.broken = False

    clean, _ = _conversation(denoiser, stats, 3)
    survived, gen = _conversation(adversary, stats, 3, faulty=break_once)
    np.testing.assert_array_equal(survived, clean)
    with pytest.raises(ValueError, match="guidance_scale and eta must be finite"):
        Unclipped(denoiser, stats, guidance_scale=float("nan"))


@pytest.mark.parametrize("solver", ["sde", "ode"])
def test_determinism(denoiser, stats, solver):
    face, feats = speaker(2 * W + 3, seed=9)
    gen = Unclipped(denoiser, stats, samples=2, steps=4, solver=solver, seed=5)
    a = generate_clip(gen, face, feats)
    b = generate_clip(gen, face, feats)  # generate_clip resets to the constructor's seed
    np.testing.assert_array_equal(a, b)
    c = generate_clip(gen, face, feats, seed=6)
    assert not np.allclose(a, c)  # another seed: other initial noise (and, for the SDE, other step noise)
    np.testing.assert_array_equal(generate_clip(gen, face, feats, seed=6), c)


def test_derive_seed_is_stable_across_processes():
    expected = derive_seed(1234, "NoXI/065_2016-04-14_Nottingham")
    assert expected == 5443355377985815008  # computed once; must never change
    code = (
        "from reactdiff.online import derive_seed; print(derive_seed(1234, 'NoXI/065_2016-04-14_Nottingham'))"
    )
    # A fresh interpreter with another string-hash salt must agree.
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "77"},
    )
    assert int(result.stdout.strip()) == expected
    seeds = {derive_seed(1234, f"site/session_{i}") for i in range(100)} | {
        derive_seed(1235, "site/session_0")
    }
    assert len(seeds) == 101 and all(0 <= s < 2**63 for s in seeds)


# -- expression range -----------------------------------------------------------------------------------


def test_expression_weights_are_clamped_and_the_clamped_window_is_the_next_past(stats):
    # The clean estimate is the row's past plus 3 model-space units (6 train stds): every expression weight
    # overshoots [0, 1] unless the clamp holds it. Pose is never clamped.
    gen = OnlineReactionGenerator(PastPlusOffset([3.0, -3.0]), stats, samples=2, steps=4)
    face, feats = speaker(2 * W)
    start = np.clip(stats.face_mean, 0.05, 0.95)
    gen.reset(start)
    first = gen.step(face[:W], audio_features=feats[:W])
    second = gen.step(face[W:], audio_features=feats[W:])
    expr, pose = slice(0, 52), slice(52, 58)
    for out in (first, second):
        assert out[:, :, expr].min() >= 0.0 and out[:, :, expr].max() <= 1.0
    # Row 0 pushes up, row 1 down, by more than the range: the clamp lands on the bounds exactly.
    np.testing.assert_allclose(first[0, :, expr], 1.0, atol=1e-6)
    np.testing.assert_allclose(first[1, :, expr], 0.0, atol=1e-6)
    # Pose: the start plus (+-3 model units = +-6 stds) per window, unclamped and accumulating through
    # the past: window 2 is conditioned on window 1 as it was returned.
    for row, sign in ((0, 1.0), (1, -1.0)):
        np.testing.assert_allclose(
            first[row, :, pose],
            np.broadcast_to(start[pose] + sign * 6 * stats.face_std[pose], (W, 6)),
            rtol=1e-4,
        )
        np.testing.assert_allclose(
            second[row, :, pose],
            np.broadcast_to(start[pose] + sign * 12 * stats.face_std[pose], (W, 6)),
            rtol=1e-4,
        )
    np.testing.assert_allclose(
        second[:, :, expr], first[:, :, expr], atol=1e-6
    )  # clamped past + 3 -> clamped again


def test_unclamped_generator_leaves_expression_weights_as_estimated(stats):
    gen = Unclipped(PastPlusOffset([3.0]), stats, samples=1, steps=4)
    face, feats = speaker(W)
    gen.reset(np.clip(stats.face_mean, 0.05, 0.95))
    assert gen.step(face, audio_features=feats)[..., :52].max() > 1.0


# -- several streams in one batch -----------------------------------------------------------------------


def test_streams_batched_equal_each_stream_alone(denoiser, stats):
    # Three conversations in lockstep give each the reactions it gets alone with its seed: same noise
    # (one generator per stream), same pasts and windows; only float rounding of the bigger batch differs.
    rng = np.random.default_rng(5)
    faces = rng.normal(size=(3, 40, N_COEFFS)).astype(np.float32)
    feats = rng.normal(size=(3, 40, A)).astype(np.float32)
    starts = stats.face_mean + rng.normal(size=(3, N_COEFFS)).astype(np.float32) * stats.face_std
    seeds = [11, 12, 13]
    batched = generate_clips(
        Unclipped(denoiser, stats, samples=2, steps=6, streams=3), faces, feats, starts, seeds
    )
    assert batched.shape == (3, 2, 40, N_COEFFS) and np.isfinite(batched).all()
    single = Unclipped(denoiser, stats, samples=2, steps=6)
    for s in range(3):
        alone = generate_clip(single, faces[s], feats[s], starts[s], seed=seeds[s])
        np.testing.assert_allclose(batched[s], alone, rtol=1e-4, atol=1e-4)
    assert not np.allclose(batched[0], batched[1], atol=1e-2)


def test_streams_one_denoiser_call_per_step_for_all_rows(denoiser, stats):
    counting = CountingDenoiser(denoiser)
    gen = OnlineReactionGenerator(counting, stats, samples=2, steps=5, streams=4)
    rng = np.random.default_rng(0)
    out = gen.step_streams(rng.normal(size=(4, W, N_COEFFS)), rng.normal(size=(4, W, A)))
    assert out.shape == (4, 2, W, N_COEFFS)
    assert counting.calls == 5


def test_stream_validation(denoiser, stats):
    gen = OnlineReactionGenerator(denoiser, stats, samples=2, steps=2, streams=2)
    face, feats = speaker(W)
    with pytest.raises(ValueError, match="step_streams"):
        gen.step(face, audio_features=feats)
    with pytest.raises(ValueError, match="3 seeds for 2 streams"):
        gen.reset(None, [1, 2, 3])
    with pytest.raises(ValueError, match=r"listener_start must be \[2, 58\]"):
        gen.reset(np.zeros(N_COEFFS))
    with pytest.raises(ValueError, match="generate_clips"):
        generate_clip(gen, face, feats)
    with pytest.raises(ValueError, match=r"audio_features must be \[2, 16, 86\]"):
        gen.step_streams(np.stack([face, face]), feats[None])
    # An int seed gives the streams different, derived seeds.
    gen.reset(None, 7)
    assert gen.seeds == [derive_seed(7, "stream0"), derive_seed(7, "stream1")]
