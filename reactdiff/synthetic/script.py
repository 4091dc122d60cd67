"""Conversation scripts (who speaks when, per family), their per-session realisations, and the voice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from reactdiff import layout

# --------------------------------------------------------------------------------------------------
# Conversation scripts (family level) and their session realisations
# --------------------------------------------------------------------------------------------------


_Event = tuple[float, float, float]  # (start, duration, level), frames


@dataclass
class _Syllable:
    onset: float  # frames
    duration: float  # frames
    amplitude: float
    f0: float  # Hz at the syllable centre
    glide: float  # relative pitch change across the syllable
    vowel: str  # "open" (a), "front" (e, i) or "rounded" (o, u)
    emphasis: bool


@dataclass
class _Phrase:
    start: float
    end: float
    syllables: list[_Syllable]


@dataclass
class _Turn:
    person: int  # 0 = A, 1 = B
    start: float
    end: float
    phrases: list[_Phrase]
    smiles: list[_Event]
    brow_raises: list[_Event]
    brow_downs: list[_Event]
    gaze: list[tuple[float, float, float, float]]  # (start, duration, horizontal, vertical) aversions
    blinks: list[float]  # onsets (frames)
    yaw: float  # head orientation held during the turn (radians, relative)


@dataclass
class _Script:
    turns: list[_Turn]
    f0: tuple[float, float]  # each person's base pitch (Hz)
    expressivity: tuple[float, float]


def _family_script(rng: np.random.Generator, n: int) -> _Script:
    """A conversation of ``n`` frames: alternating turns of 2-6 s with 0.25-0.8 s gaps."""
    f0 = (float(rng.uniform(105, 200)), float(rng.uniform(105, 200)))
    expressivity = (float(rng.uniform(0.7, 1.3)), float(rng.uniform(0.7, 1.3)))
    turns: list[_Turn] = []
    person = int(rng.integers(2))
    t = float(rng.uniform(3, 12))
    while t < n - 25:
        end = min(t + float(rng.uniform(50, 150)), n - 2.0)
        turns.append(_turn(rng, person, t, end, f0[person], expressivity[person]))
        t = end + float(rng.uniform(6, 20))
        person = 1 - person
    return _Script(turns=turns, f0=f0, expressivity=expressivity)


def _turn(rng: np.random.Generator, person: int, start: float, end: float, f0: float, expr: float) -> _Turn:
    phrases: list[_Phrase] = []
    s = start
    while s < end - 12:
        pe = min(s + float(rng.uniform(20, 60)), end)
        syllables: list[_Syllable] = []
        onset = s
        while onset < pe - 4:
            ioi = float(rng.uniform(4.5, 8.0))  # 3.1-5.6 syllables per second
            progress = (onset - s) / max(pe - s, 1.0)
            syllables.append(
                _Syllable(
                    onset=onset,
                    duration=ioi * float(rng.uniform(0.7, 0.95)),
                    amplitude=float(rng.uniform(0.55, 1.0)),
                    # declination across the phrase plus per-syllable variation
                    f0=f0 * (1.08 - 0.16 * progress) * float(rng.uniform(0.9, 1.1)),
                    glide=float(rng.uniform(-0.08, 0.08)),
                    vowel=str(rng.choice(["open", "front", "rounded"], p=[0.4, 0.3, 0.3])),
                    emphasis=False,
                )
            )
            onset += ioi
        if syllables:
            n_emph = 1 if len(syllables) < 8 else 2
            for k in rng.choice(len(syllables), size=min(n_emph, len(syllables)), replace=False):
                syllables[int(k)].emphasis = True
                syllables[int(k)].amplitude *= 1.5
                syllables[int(k)].f0 *= 1.2
            phrases.append(_Phrase(s, syllables[-1].onset + syllables[-1].duration, syllables))
        s = pe + float(rng.uniform(4, 12))
    length = end - start
    smiles, brow_raises, brow_downs = [], [], []
    for _ in range(int(rng.poisson(length / 90.0 + 0.3))):
        dur = float(rng.uniform(20, 55))
        smiles.append(
            (float(rng.uniform(start, max(end - dur, start + 1))), dur, expr * float(rng.uniform(0.3, 0.7)))
        )
    for phrase in phrases:
        for syl in phrase.syllables:
            if syl.emphasis and rng.random() < 0.75:
                brow_raises.append(
                    (syl.onset - 2, float(rng.uniform(8, 16)), expr * float(rng.uniform(0.4, 0.8)))
                )
    if rng.random() < 0.3:
        dur = float(rng.uniform(15, 40))
        brow_downs.append(
            (float(rng.uniform(start, max(end - dur, start + 1))), dur, float(rng.uniform(0.3, 0.6)))
        )
    # Speakers look away while planning (mostly at the start of a turn) and blink at phrase boundaries;
    # both belong to the script so that a family's sessions share them.
    gaze = []
    for k in range(int(rng.poisson(length / 80.0)) + 1):
        at = start if k == 0 else float(rng.uniform(start, end))
        horizontal = float(rng.choice([-1, 1]) * rng.uniform(0.2, 0.45))
        gaze.append((at, float(rng.uniform(15, 50)), horizontal, float(rng.uniform(-0.3, 0.35))))
    blinks = [p.end + float(rng.uniform(0, 3)) for p in phrases if rng.random() < 0.6]
    yaw = float(rng.normal(0, 0.08))
    return _Turn(person, start, end, phrases, smiles, brow_raises, brow_downs, gaze, blinks, yaw)


def _realise(script: _Script, rng: np.random.Generator) -> _Script:
    """One session's take on a family script: each turn shifted by up to 2 frames, amplitudes +-5-8%."""
    turns = []
    for turn in script.turns:
        shift = float(np.clip(np.round(rng.normal(0, 1.0)), -2, 2))

        def events(
            items: list[tuple[float, float, float]], shift: float = shift
        ) -> list[tuple[float, float, float]]:
            return [(s + shift, d, level * float(rng.normal(1, 0.08))) for s, d, level in items]

        phrases = [
            _Phrase(
                p.start + shift,
                p.end + shift,
                [
                    replace(
                        y,
                        onset=y.onset + shift,
                        amplitude=y.amplitude * float(rng.normal(1, 0.05)),
                        f0=y.f0 * float(rng.normal(1, 0.02)),
                    )
                    for y in p.syllables
                ],
            )
            for p in turn.phrases
        ]
        gaze = [
            (t + shift, d, h * float(rng.normal(1, 0.08)), v * float(rng.normal(1, 0.08)))
            for t, d, h, v in turn.gaze
        ]
        turns.append(
            replace(
                turn,
                start=turn.start + shift,
                end=turn.end + shift,
                phrases=phrases,
                smiles=events(turn.smiles),
                brow_raises=events(turn.brow_raises),
                brow_downs=events(turn.brow_downs),
                gaze=gaze,
                blinks=[t + shift for t in turn.blinks],
                yaw=turn.yaw + float(rng.normal(0, 0.01)),
            )
        )
    return _Script(turns=turns, f0=script.f0, expressivity=script.expressivity)


# --------------------------------------------------------------------------------------------------
# Voice
# --------------------------------------------------------------------------------------------------

# Harmonic weights (k = 1..10) of three vowel classes: open (a), front (e/i), rounded (o/u).
_HARMONICS = np.arange(1, 11)
_VOWEL_WEIGHTS = {
    "open": 1.0 / _HARMONICS * (1 + 1.5 * np.exp(-(((_HARMONICS - 5) / 1.5) ** 2))),
    "front": 1.0
    / _HARMONICS
    * (1 + 1.2 * np.exp(-(((_HARMONICS - 2) / 1.0) ** 2)) + 0.8 * (_HARMONICS >= 8)),
    "rounded": 1.0 / _HARMONICS**1.6 * (1 + 1.0 * np.exp(-(((_HARMONICS - 3) / 1.0) ** 2))),
}


def _syllable_shape(u: np.ndarray) -> np.ndarray:
    """Energy envelope over a syllable, ``u`` in [0, 1): quick attack, slower decay."""
    return np.where(u < 0.25, np.sin(np.pi * u / 0.5) ** 2, np.cos(np.pi * (u - 0.25) / 1.5) ** 2)


def _voice(
    syllables: Sequence[_Syllable], n_frames: int, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthesise one person's voice track.

    Returns ``audio`` float32 ``[n_frames * sample_rate / 25]`` in [-1, 1] and the frame-level RMS of the
    syllable envelope, ``open_env`` and ``round_env`` float64 ``[n_frames]``, split by vowel class: the
    face's jaw opening and lip rounding follow these.
    """
    spf = sample_rate // layout.FPS
    n = n_frames * spf
    env = np.zeros(n)
    env_round = np.zeros(n)
    audio = np.zeros(n)
    if syllables:
        # One continuous pitch contour: knots at each syllable's start and end, interpolated between.
        knots_t = np.concatenate([[y.onset * spf, (y.onset + y.duration) * spf] for y in syllables])
        knots_f = np.concatenate([[y.f0 * (1 + y.glide / 2), y.f0 * (1 - y.glide / 2)] for y in syllables])
        order = np.argsort(knots_t, kind="stable")
        f0 = np.clip(np.interp(np.arange(n), knots_t[order], knots_f[order]), 90.0, 260.0)
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        nyquist = sample_rate / 2
        for y in syllables:
            lo = max(int(round(y.onset * spf)), 0)
            hi = min(int(round((y.onset + y.duration) * spf)), n)
            if hi <= lo:
                continue
            u = (np.arange(lo, hi) - y.onset * spf) / (y.duration * spf)
            shape = y.amplitude * _syllable_shape(np.clip(u, 0, 1))
            (env_round if y.vowel == "rounded" else env)[lo:hi] += shape
            weights = _VOWEL_WEIGHTS[y.vowel]
            # sin(k phi) by the Chebyshev recurrence: one sin and one cos per sample instead of ten.
            ph = phase[lo:hi]
            s_prev, s_k, two_cos = np.zeros(hi - lo), np.sin(ph), 2 * np.cos(ph)
            tone = np.zeros(hi - lo)
            for k, w in zip(_HARMONICS, weights, strict=True):
                if k * y.f0 * 1.3 >= nyquist:  # no aliasing at the top of the contour
                    break
                tone += w * s_k
                s_prev, s_k = s_k, two_cos * s_k - s_prev
            audio[lo:hi] += shape * tone
    total = env + env_round
    audio = 0.22 * audio + 0.02 * total * rng.standard_normal(n)  # harmonic voice plus breath noise
    audio += 0.002 * rng.standard_normal(n)  # room / microphone floor, about -54 dBFS
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    frame_rms = lambda e: np.sqrt((e.reshape(n_frames, spf) ** 2).mean(axis=1))  # noqa: E731
    return audio, frame_rms(env), frame_rms(env_round)
