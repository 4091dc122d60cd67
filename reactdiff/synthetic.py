"""Deterministic synthetic corpus in the REACT2024 layout (see :mod:`reactdiff.layout`).

The licensed corpus cannot ship, so this module writes a stand-in that a reader cannot tell apart by
its layout, and whose content has the structure the method relies on:

* Sessions come in *families*. A family is a conversation script: who speaks when (turns made of
  phrases made of syllables), how loud and at what pitch, and each person's speaking expressions
  (smiles, brow raises at emphasis, head beats). All sessions of a family play the same script up to
  timing jitter of a few frames and small amplitude noise, so they present nearly the same speaker.
* In each session each person draws a listener *style* (:data:`STYLES`). While a person listens, their
  face reacts, after a human delay of 0.3-0.6 s, to the other person's face (smile, brow raises) and
  voice (energy, emphasised syllables, ends of phrases), transformed by the style; while they speak,
  the script drives them. Both directions of a dyad are therefore meaningful.
* Appropriateness is known by construction: for speaker example ``k`` the listener of example ``j``
  is appropriate iff both belong to the same family and the same role (A speaks to B, or B to A).
  One speaker context thus has ``sessions_per_family`` appropriate reactions of different styles.

Faces are built from a few latent *actions* (smile, brow raise, jaw opening, blink, gaze, ...) that
are smooth in time (critically damped filtering of event targets and of slow noise), mapped to the 52
ARKit blendshapes by a fixed loading matrix that moves symmetric pairs together and co-occurring
pairs in the same direction, then clipped to ``[0, 1]``; mutually exclusive pairs are then made so by
capping the weaker of the two (:func:`enforce_exclusive`). Head pose sits at the real corpus means
with drifts, nods (pitch oscillations of 1.2-2 Hz over 0.5-1.25 s) and tilts. Ranges come from the
real coefficient statistics and the pair lists from the AU dependency table (``au_pairs.json``).

Voice is a harmonic signal (pitch 95-260 Hz, contour per syllable, ~4 Hz syllable envelope, breath
noise) while speaking and a low noise floor otherwise; the speaker's jaw follows the same syllable
envelope. Emotion files are derived from the coefficients of each frame
(:func:`emotion_from_coefficients`).

Every random draw comes from ``numpy.random.default_rng([seed, split, family, stream, ...])`` (stream 0:
the family script, 1: session ``s`` with ``s`` appended, 2: the recording site) so the same
:class:`SyntheticSpec` gives byte-identical files, whatever the order or the process sessions are
generated in. Ground truth (family, styles, delays, speaking turns) goes to
``<root>/synthetic_meta.json``, which no REACT reader looks at.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from scipy import signal

from reactdiff import layout, reference
from reactdiff.atomic import atomic_path, write_json

META_FILE = "synthetic_meta.json"

_SITES = {
    "NoXI": (("Expert_video", "Novice_video"), ("Paris", "Nottingham", "Augsburg")),
    "RECOLA": (("P1", "P2"), ("Fribourg",)),
}
_CLIP_NAME = "1"
_FIRST_DAY = datetime.date(2016, 3, 1)
# Activity level (blendshape units) above which an action counts as present: the exclusivity of
# mutually exclusive pairs is enforced at this level, and the tests measure it there.
ACTIVE_LEVEL = 0.3


# --------------------------------------------------------------------------------------------------
# Specification
# --------------------------------------------------------------------------------------------------


def _default_families() -> dict[str, int]:
    return {"train": 6, "val": 2, "test": 2}


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. ``families[split] * sessions_per_family`` dyads (csv rows) per split.

    ``frames`` is the number of frames used per clip; files carry ``frames + 1`` rows like the real
    corpus (751 for 750). ``n_styles`` listener styles (1 to ``len(STYLES)``) are drawn from.
    """

    seed: int = 0
    frames: int = layout.CLIP_FRAMES
    sample_rate: int = layout.CORPUS_SAMPLE_RATE
    families: dict[str, int] = field(default_factory=_default_families)
    sessions_per_family: int = 4
    n_styles: int = 4

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that cannot be generated."""
        if self.seed < 0:
            raise ValueError(
                f"seed must be >= 0 (numpy seed sequences take non-negative ints), got {self.seed}"
            )
        if self.frames < 50:
            raise ValueError(f"frames must be >= 50 (2 s, room for one turn each), got {self.frames}")
        if self.sample_rate < 8000 or self.sample_rate % layout.FPS:
            raise ValueError(
                f"sample_rate must be >= 8000 Hz and a multiple of {layout.FPS} (whole samples per frame), "
                f"got {self.sample_rate}"
            )
        unknown = sorted(set(self.families) - set(layout.SPLITS))
        if unknown:
            raise ValueError(f"families has unknown split(s) {unknown}; use {list(layout.SPLITS)}")
        bad = {s: n for s, n in self.families.items() if n < 0}
        if bad:
            raise ValueError(f"families must be >= 0 per split, got {bad}")
        if self.sessions_per_family < 1:
            raise ValueError(f"sessions_per_family must be >= 1, got {self.sessions_per_family}")
        if not 1 <= self.n_styles <= len(STYLES):
            raise ValueError(f"n_styles must be in [1, {len(STYLES)}], got {self.n_styles}")


def preset(name: str) -> SyntheticSpec:
    """``"sample"``: 40 dyads of 30 s (10 families of 4), quick to generate and to featurise.

    ``"paper"``: REACT2024-sized, 1596 / 564 / 808 dyads in train / val / test (the real corpus has
    1594 / 562 / 806), as families of 4 sessions.
    """
    if name == "sample":
        return SyntheticSpec()
    if name == "paper":
        return SyntheticSpec(families={"train": 399, "val": 141, "test": 202}, sessions_per_family=4)
    raise ValueError(f"unknown synthetic preset {name!r}; use 'sample' or 'paper'")


@functools.cache
def _index() -> dict[str, int]:
    return {name: i for i, name in enumerate(reference.expression_names())}


def _bilateral(base: str) -> tuple[int, ...]:
    """``"mouthSmile"`` -> indices of ``mouthSmileLeft`` and ``mouthSmileRight`` (or of ``base`` alone)."""
    idx = _index()
    if base in idx:
        return (idx[base],)
    return (idx[base + "Left"], idx[base + "Right"])


# --------------------------------------------------------------------------------------------------
# Latent actions and their blendshape loadings
# --------------------------------------------------------------------------------------------------

# Each action moves a group of blendshapes together. Bilateral names ("mouthSmile") load both sides
# equally, which is what makes symmetric pairs correlate; secondary loadings follow the co-occurrence
# table (e.g. a smile also squints the cheeks, a brow raise lifts the gaze), and negative loadings
# relax antagonists (a brow raise lowers browDown) so exclusive pairs rarely need capping.
ACTIONS: dict[str, dict[str, float]] = {
    "smile": {
        "mouthSmile": 0.75, "cheekSquint": 0.30, "mouthDimple": 0.10, "eyeSquint": 0.10,
        "browOuterUp": 0.08, "mouthLeft": 0.06, "mouthRight": 0.06, "noseSneer": 0.04,
    },
    "brow_raise": {
        "browInnerUp": 0.55, "browOuterUp": 0.45, "eyeWide": 0.22, "eyeLookUp": 0.18, "browDown": -0.55,
    },
    "brow_down": {
        "browDown": 0.45, "eyeSquint": 0.16, "eyeLookDown": 0.12, "mouthFrown": 0.06, "mouthUpperUp": 0.05,
        "eyeBlink": 0.10, "browOuterUp": -0.10, "eyeWide": -0.15, "eyeLookUp": -0.10,
    },
    "surprise": {
        "eyeWide": 0.55, "browInnerUp": 0.40, "browOuterUp": 0.38, "jawOpen": 0.10, "mouthLowerDown": 0.10,
        "eyeLookUp": 0.10, "browDown": -0.60, "eyeBlink": -0.25,
    },
    "press": {
        "mouthPress": 0.45, "mouthShrugLower": 0.04, "cheekSquint": 0.20, "mouthRollLower": 0.02,
        "jawOpen": -0.05, "mouthSmile": -0.15, "mouthLowerDown": -0.10,
    },
    "frown": {
        "mouthFrown": 0.22, "browInnerUp": 0.18, "browDown": 0.12, "mouthShrugLower": 0.02,
        "cheekSquint": 0.15, "mouthSmile": -0.25,
    },
    "sneer": {
        "noseSneer": 0.30, "mouthUpperUp": 0.25, "cheekSquint": 0.15, "browDown": 0.12, "mouthSmile": -0.20,
    },
    # Speech: opening (open / front vowels) and rounding (o / u), driven by the syllable envelope.
    "jaw": {"jawOpen": 0.42, "mouthLowerDown": 0.26, "mouthStretch": 0.05, "mouthPress": -0.12},
    "round": {"mouthFunnel": 0.30, "mouthPucker": 0.02, "mouthShrugUpper": 0.02, "jawOpen": 0.08},
    "blink": {"eyeBlink": 0.85, "browDown": 0.05, "eyeSquint": 0.05, "eyeWide": -0.20},
    "gaze_in": {"eyeLookIn": 0.35, "eyeLookOut": -0.20},
    "gaze_out": {"eyeLookOut": 0.40, "eyeLookIn": -0.12},
    "gaze_up": {"eyeLookUp": 0.35, "browOuterUp": 0.06, "eyeLookDown": -0.10},
    "gaze_down": {"eyeLookDown": 0.35, "eyeBlink": 0.20, "browDown": 0.05, "eyeLookUp": -0.10},
    # mouthLeft / mouthRight and jawLeft / jawRight are listed as symmetric pairs: they move together.
    "mouth_side": {"mouthLeft": 0.10, "mouthRight": 0.10, "jawSide": 0.08, "cheekSquint": 0.05},
}  # fmt: skip
ACTION_NAMES = tuple(ACTIONS)


def _loading_names(base: str) -> tuple[int, ...]:
    """Blendshape indices an ``ACTIONS`` key stands for (``"jawSide"`` is jawLeft and jawRight)."""
    if base == "jawSide":
        return (_index()["jawLeft"], _index()["jawRight"])
    return _bilateral(base)


@functools.cache
def loading_matrix() -> np.ndarray:
    """Fixed map from latent actions to blendshapes, float64 ``[len(ACTION_NAMES), 52]``."""
    matrix = np.zeros((len(ACTION_NAMES), layout.N_EXPRESSION))
    for a, name in enumerate(ACTION_NAMES):
        for base, weight in ACTIONS[name].items():
            for i in _loading_names(base):
                matrix[a, i] += weight
    return matrix


# Per-blendshape resting level as a fraction of the real mean: driven dimensions rest lower because
# the actions add to them on average; calibrated so the corpus means land near the real means.
_REST_FRACTION: dict[str, float] = {
    "browDown": 0.85, "browInnerUp": 0.55, "browOuterUp": 0.5, "cheekSquint": 0.2, "eyeBlink": 0.55,
    "eyeLookDown": 0.7, "eyeLookIn": 0.8, "eyeLookOut": 0.75, "eyeLookUp": 0.6, "eyeSquint": 0.5,
    "eyeWide": 0.6, "jawOpen": 0.45, "mouthDimple": 0.5, "mouthFrown": 0.5, "mouthLowerDown": 0.4,
    "mouthPress": 0.6, "mouthSmile": 0.45, "mouthFunnel": 0.4, "mouthStretch": 0.8, "mouthUpperUp": 0.6,
    "noseSneer": 0.6, "mouthShrugLower": 0.5, "mouthLeft": 0.6, "mouthRight": 0.6,
}  # fmt: skip


@functools.cache
def _rest_expression() -> np.ndarray:
    mean, _ = reference.coefficient_stats()
    rest = mean[: layout.N_EXPRESSION].copy()
    for base, fraction in _REST_FRACTION.items():
        for i in _loading_names(base):
            rest[i] *= fraction
    return rest


# --------------------------------------------------------------------------------------------------
# Listener styles
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How a listener turns the speaker's signals into a reaction.

    ``offset``: action levels held while listening. ``gain[input][action]``: how strongly each delayed
    speaker input (``smile``, ``brow``, ``energy``, ``emphasis``) drives each action. Nods are pitch
    oscillations started after the speaker's phrase ends / emphasised syllables with the given
    probabilities; ``tilt`` is a head roll held while listening (radians); ``gaze`` scales gaze wander.
    """

    name: str
    offset: dict[str, float]
    gain: dict[str, dict[str, float]]
    nod_at_phrase_end: float
    nod_at_emphasis: float
    nod_amplitude: float
    tilt: float = 0.0
    gaze: float = 1.0


STYLES: tuple[Style, ...] = (
    Style(
        "warm",
        offset={"smile": 0.25},
        gain={"smile": {"smile": 0.9}, "emphasis": {"smile": 0.35}, "energy": {"smile": 0.15}},
        nod_at_phrase_end=0.85, nod_at_emphasis=0.45, nod_amplitude=0.055,
    ),
    Style(
        "attentive",
        offset={"brow_down": 0.12},  # focused
        gain={"smile": {"smile": 0.25}, "emphasis": {"brow_raise": 0.55}, "brow": {"brow_raise": 0.35}},
        nod_at_phrase_end=0.65, nod_at_emphasis=0.2, nod_amplitude=0.035, gaze=0.4,
    ),
    Style(
        "surprised",
        offset={"surprise": 0.3},
        gain={
            "emphasis": {"surprise": 0.75, "brow_raise": 0.25}, "brow": {"surprise": 0.45},
            "smile": {"smile": 0.35}, "energy": {"surprise": 0.15},
        },
        nod_at_phrase_end=0.35, nod_at_emphasis=0.15, nod_amplitude=0.04,
    ),
    Style(
        "sceptical",
        offset={"brow_down": 0.35, "press": 0.2},
        gain={
            "smile": {"press": 0.5, "sneer": 0.35},
            "emphasis": {"brow_down": 0.4, "press": 0.35, "frown": 0.5},
            "energy": {"brow_down": 0.2},
        },
        nod_at_phrase_end=0.12, nod_at_emphasis=0.0, nod_amplitude=0.03, tilt=0.09, gaze=1.3,
    ),
)  # fmt: skip
STYLE_NAMES = tuple(s.name for s in STYLES)


# --------------------------------------------------------------------------------------------------
# Signal helpers (all along axis 0, frames at 25 fps unless said otherwise)
# --------------------------------------------------------------------------------------------------


def _smooth(x: np.ndarray, tau: float) -> np.ndarray:
    """Critically damped second-order low-pass (two equal first-order stages), unit DC gain.

    Starts at rest at ``x[0]`` so there is no start-up transient; ``tau`` in samples.
    """
    a = float(np.exp(-1.0 / tau))
    b, den = [1.0 - a], [1.0, -a]
    x = np.asarray(x, dtype=np.float64)
    for _ in range(2):
        zi = a * x[:1]
        x, _ = signal.lfilter(b, den, x, axis=0, zi=zi)
    return x


def _ou(rng: np.random.Generator, n: int, tau: float, std: float, smooth: float = 2.0) -> np.ndarray:
    """Stationary slow noise ``[n]``: an AR(1) process of correlation time ``tau`` frames, smoothed."""
    a = float(np.exp(-1.0 / tau))
    innovation = rng.standard_normal(n) * np.sqrt(1.0 - a * a)
    x, _ = signal.lfilter([1.0], [1.0, -a], innovation, zi=[a * rng.standard_normal()])
    return std * _smooth(x, smooth)


def _pulses(n: int, events: Iterable[tuple[float, float, float]]) -> np.ndarray:
    """Piecewise-constant target ``[n]`` from ``(start, duration, level)`` events (frames); overlaps add."""
    target = np.zeros(n)
    for start, duration, level in events:
        lo = max(int(round(start)), 0)
        hi = min(int(round(start + duration)), n)
        if hi > lo:
            target[lo:hi] += level
    return target


def _delay(x: np.ndarray, d: int) -> np.ndarray:
    """``x`` shifted ``d`` frames later, holding the first value."""
    if d <= 0:
        return x.copy()
    return np.concatenate([np.repeat(x[:1], d, axis=0), x[:-d]], axis=0)


def _nod(n: int, onset: float, duration: float, freq: float, amplitude: float) -> np.ndarray:
    """Pitch oscillation ``[n]`` (radians) under a Hann window: a head nod of ``freq`` Hz."""
    out = np.zeros(n)
    lo, hi = int(np.ceil(onset)), int(np.floor(onset + duration))
    lo, hi = max(lo, 0), min(hi, n)
    if hi <= lo:
        return out
    t = (np.arange(lo, hi) - onset) / layout.FPS
    window = np.sin(np.pi * (np.arange(lo, hi) - onset) / duration) ** 2
    out[lo:hi] = amplitude * window * np.sin(2 * np.pi * freq * t)
    return out


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


# --------------------------------------------------------------------------------------------------
# Faces
# --------------------------------------------------------------------------------------------------


@dataclass
class _Drive:
    """One person's script-driven signals (zero outside their own turns), frames ``[n]`` each."""

    speaking: np.ndarray  # 1 inside own turns
    actions: dict[str, np.ndarray]
    energy: np.ndarray  # smoothed voice energy, for the partner's reaction
    emphasis: np.ndarray  # smoothed emphasis pulses, for the partner's reaction
    phrase_ends: list[float]
    emphasis_times: list[float]
    pitch: np.ndarray  # head beats on emphasised syllables (radians)
    yaw: np.ndarray  # head orientation held per turn (radians)
    gaze_h: np.ndarray  # gaze aversion while speaking (signed action levels)
    gaze_v: np.ndarray
    blinks: list[float]


def _script_drive(turns: Sequence[_Turn], n: int, open_env: np.ndarray, round_env: np.ndarray) -> _Drive:
    speaking = _pulses(n, [(t.start, t.end - t.start, 1.0) for t in turns])
    smiles = [e for t in turns for e in t.smiles]
    raises = [e for t in turns for e in t.brow_raises]
    downs = [e for t in turns for e in t.brow_downs]
    emph_times = [y.onset for t in turns for p in t.phrases for y in p.syllables if y.emphasis]
    ends = [p.end for t in turns for p in t.phrases]
    actions = {
        "smile": _smooth(_pulses(n, smiles), 4.0),
        "brow_raise": _smooth(_pulses(n, raises), 2.5),
        "brow_down": _smooth(_pulses(n, downs), 5.0),
        # Jaw and lips follow the syllable envelope with ~80 ms of muscle lag; in fluent speech the jaw
        # does not close fully between syllables, hence the slower sustained part.
        "jaw": _smooth(0.55 * open_env + 0.2 * round_env + 0.35 * _smooth(open_env, 6.0), 1.6),
        "round": _smooth(0.7 * round_env + 0.2 * _smooth(round_env, 6.0), 1.6),
    }
    energy = _smooth(open_env + round_env, 6.0)
    emphasis = _smooth(_pulses(n, [(t, 12.0, 1.0) for t in emph_times]), 2.0)
    # Speaking head motion: small downward beats on emphasis, yaw held per turn.
    beats = sum((_nod(n, t - 1, 12.0, 2.0, 0.025) for t in emph_times), np.zeros(n))
    yaw = _smooth(_pulses(n, [(t.start, t.end - t.start, t.yaw) for t in turns]), 8.0)
    aversions = [g for t in turns for g in t.gaze]
    gaze_h = _smooth(_pulses(n, [(t, d, h) for t, d, h, _ in aversions]), 2.0)
    gaze_v = _smooth(_pulses(n, [(t, d, v) for t, d, _, v in aversions]), 2.0)
    blinks = [b for t in turns for b in t.blinks]
    return _Drive(speaking, actions, energy, emphasis, ends, emph_times, beats, yaw, gaze_h, gaze_v, blinks)


def _face(
    rng: np.random.Generator,
    n: int,
    own: _Drive,
    other: _Drive,
    style: Style,
    delay: int,
    expressivity: float,
) -> np.ndarray:
    """One person's coefficients float32 ``[n, 58]``: own script while speaking, reaction while listening."""
    mean, std = reference.coefficient_stats()
    listening = 1.0 - _smooth(own.speaking, 3.0)
    actions = {name: np.zeros(n) for name in ACTION_NAMES}
    for name, series in own.actions.items():
        actions[name] += series

    # Reaction: the partner's signals, delayed, through the style's gains, eased in with a
    # critically damped response (so the effective delay is ``delay`` plus ~2 frames).
    inputs = {
        "smile": other.actions["smile"],
        "brow": other.actions["brow_raise"],
        "energy": np.clip(other.energy / 0.6, 0.0, 1.5),
        "emphasis": other.emphasis,
    }
    scale = float(rng.uniform(0.8, 1.2))  # this person's reactivity
    for name, level in style.offset.items():
        actions[name] += listening * level * scale
    for source, targets in style.gain.items():
        delayed = _delay(inputs[source], delay)
        for name, gain in targets.items():
            actions[name] += listening * _smooth(delayed * gain * scale, 2.0)

    # Idle behaviour: blinks (scripted at the speaker's phrase ends, spontaneous about 15 a minute while
    # listening), gaze wander with fixations around the partner, a little spontaneous expression.
    onsets = list(own.blinks)
    t = float(rng.exponential(layout.FPS / 0.25))
    while t < n:
        if listening[int(t)] > 0.5:
            onsets.append(t)
        t += 12 + float(rng.exponential(layout.FPS / 0.25))
    actions["blink"] += _blink_train(rng, n, onsets) + np.maximum(_ou(rng, n, 50.0, 0.06), -0.05)
    gaze_h = (
        _ou(rng, n, 30.0, 0.12 * style.gaze) + _smooth(_fixations(rng, n, 0.1 * style.gaze), 1.5) + own.gaze_h
    )
    gaze_v = _ou(rng, n, 30.0, 0.12 * style.gaze) + own.gaze_v
    actions["gaze_out"] += np.maximum(gaze_h, 0)
    actions["gaze_in"] += np.maximum(-gaze_h, 0)
    actions["gaze_up"] += np.maximum(gaze_v, 0)
    actions["gaze_down"] += np.maximum(-gaze_v, 0)
    actions["mouth_side"] += _ou(rng, n, 40.0, 0.15)
    actions["smile"] += expressivity * np.maximum(_ou(rng, n, 60.0, 0.06), 0)

    latent = np.stack([actions[name] for name in ACTION_NAMES], axis=1)  # [n, K]
    expr_std = std[: layout.N_EXPRESSION]
    rest = _rest_expression() * (1 + rng.normal(0, 0.06, layout.N_EXPRESSION))
    jitter = np.stack([_ou(rng, n, 25.0, 1.0) for _ in range(layout.N_EXPRESSION)], axis=1)
    expression = rest + latent @ loading_matrix() + 0.04 * expr_std * jitter
    expression = enforce_exclusive(np.clip(expression, 0.0, 1.0))

    # Head pose: a personal orientation near the real mean, slow drift, turn-level yaw while
    # speaking, nods while listening (after the partner's phrase ends and emphases), a style tilt.
    pose_mean, pose_std = mean[layout.POSE], std[layout.POSE]
    base = pose_mean + rng.normal(0, 0.3, 6) * pose_std
    pitch = _ou(rng, n, 60.0, 0.04) + own.pitch
    # Backchannel nods at the ends of the partner's phrases are the big ones; nods at emphasised
    # syllables, mid-phrase, are half as large.
    nod_triggers = (
        (other.phrase_ends, style.nod_at_phrase_end, 1.0),
        (other.emphasis_times, style.nod_at_emphasis, 0.5),
    )
    for times, prob, size in nod_triggers:
        for t0 in times:
            onset = t0 + delay + float(rng.uniform(0, 4))
            freq = float(rng.uniform(1.2, 2.0))
            duration = float(rng.uniform(1.0, 1.5)) * layout.FPS / freq  # one to one and a half cycles
            amp = size * style.nod_amplitude * float(rng.uniform(0.7, 1.3))
            if rng.random() < prob and 0 <= onset < n and listening[int(onset)] > 0.5:
                pitch += _nod(n, onset, duration, freq, amp)
    yaw = _ou(rng, n, 80.0, 0.08) + own.yaw
    roll = _ou(rng, n, 80.0, 0.03) + style.tilt * listening
    translation = np.stack([_ou(rng, n, 60.0, 0.3 * s) for s in pose_std[3:]], axis=1) + 0.02 * np.stack(
        [yaw, pitch, np.zeros(n)], axis=1
    )
    pose = base + np.concatenate([np.stack([pitch, yaw, roll], axis=1), translation], axis=1)
    return np.concatenate([expression, pose], axis=1).astype(np.float32)


def _blink_train(rng: np.random.Generator, n: int, onsets: Iterable[float]) -> np.ndarray:
    """Lid closures ``[n]``: a 0.36-0.48 s smooth closure and reopening at each onset (frames)."""
    out = np.zeros(n)
    for t in sorted(onsets):
        width = int(rng.integers(9, 13))
        amplitude = float(rng.uniform(0.6, 0.95))
        lo = int(round(t))
        hi = min(lo + width, n)
        if 0 <= lo < hi:
            out[lo:hi] = np.maximum(out[lo:hi], amplitude * np.hanning(width + 2)[1:-1][: hi - lo])
    return _smooth(out, 0.8)


def _fixations(rng: np.random.Generator, n: int, spread: float) -> np.ndarray:
    """Piecewise-constant gaze targets ``[n]`` that jump (saccades) about every 1.5 s."""
    out = np.zeros(n)
    t = 0
    while t < n:
        hold = int(rng.integers(15, 60))
        out[t : t + hold] = rng.normal(0, spread)
        t += hold
    return out


def enforce_exclusive(expression: np.ndarray, level: float = ACTIVE_LEVEL) -> np.ndarray:
    """Cap the weaker of each mutually exclusive pair just below ``level`` where both exceed it.

    ``expression`` float ``[frames, 52]`` in [0, 1]; returns a new array. Capping only lowers values, so
    one pass over the pairs leaves every pair satisfied.
    """
    out = np.array(expression, dtype=np.float64, copy=True)
    cap = 0.95 * level
    for i, j in reference.au_pairs()["mutually_exclusive"].tolist():
        both = (out[:, i] > level) & (out[:, j] > level)
        if both.any():
            weaker = np.where(out[:, i] <= out[:, j], i, j)
            rows = np.flatnonzero(both)
            out[rows, weaker[rows]] = cap
    return out


# --------------------------------------------------------------------------------------------------
# Emotion annotations from coefficients
# --------------------------------------------------------------------------------------------------

# (AU, blendshapes, how to combine them, threshold): bilateral pairs are averaged, alternatives
# (any of several ways to part the lips) take the maximum.
AU_RULES: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("AU1", ("browInnerUp",), "mean", 0.30),
    ("AU2", ("browOuterUpLeft", "browOuterUpRight"), "mean", 0.25),
    ("AU4", ("browDownLeft", "browDownRight"), "mean", 0.60),
    ("AU6", ("cheekSquintLeft", "cheekSquintRight"), "mean", 0.25),
    ("AU7", ("eyeSquintLeft", "eyeSquintRight"), "mean", 0.12),
    ("AU9", ("noseSneerLeft", "noseSneerRight"), "mean", 0.15),
    ("AU10", ("mouthUpperUpLeft", "mouthUpperUpRight"), "mean", 0.12),
    ("AU12", ("mouthSmileLeft", "mouthSmileRight"), "mean", 0.45),
    ("AU14", ("mouthDimpleLeft", "mouthDimpleRight"), "mean", 0.15),
    ("AU15", ("mouthFrownLeft", "mouthFrownRight"), "mean", 0.08),
    ("AU17", ("mouthShrugLower",), "mean", 0.03),
    ("AU23", ("mouthPucker", "mouthFunnel"), "max", 0.12),
    ("AU24", ("mouthPressLeft", "mouthPressRight"), "mean", 0.35),
    ("AU25", ("jawOpen", "mouthLowerDownLeft", "mouthLowerDownRight"), "max", 0.15),
    ("AU26", ("jawOpen",), "mean", 0.18),
)


def _combine(expression: np.ndarray, names: Sequence[str], how: str) -> np.ndarray:
    idx = [_index()[name] for name in names]
    block = expression[:, idx]
    return block.max(axis=1) if how == "max" else block.mean(axis=1)


def emotion_from_coefficients(coeffs: np.ndarray) -> pd.DataFrame:
    """Per-frame emotion annotations derived from coefficients ``[frames, 58]``.

    Returns a ``[frames, 25]`` frame with columns ``layout.EMOTION_COLUMNS``: 15 AU occurrences (0/1,
    thresholds in :data:`AU_RULES`), valence in [-1, 1] (smile against frown, brow lowering, press,
    sneer), arousal in [-1, 1] (eye widening, brow raise, jaw opening and frame-to-frame motion), and 8
    expression probabilities (softmax of template scores, each row sums to 1).
    """
    coeffs = np.asarray(coeffs, dtype=np.float64)
    if coeffs.ndim != 2 or coeffs.shape[1] != layout.N_COEFFS:
        raise ValueError(f"coeffs must be [frames, {layout.N_COEFFS}], got shape {coeffs.shape}")
    x = coeffs[:, layout.EXPRESSION]

    def f(*names: str) -> np.ndarray:
        return _combine(x, names, "mean")

    out: dict[str, np.ndarray] = {}
    for au, names, how, threshold in AU_RULES:
        out[au] = (_combine(x, names, how) > threshold).astype(np.float64)

    smile = f("mouthSmileLeft", "mouthSmileRight")
    frown = f("mouthFrownLeft", "mouthFrownRight")
    brow_down = np.maximum(f("browDownLeft", "browDownRight") - 0.5, 0.0)
    press = np.maximum(f("mouthPressLeft", "mouthPressRight") - 0.2, 0.0)
    sneer = f("noseSneerLeft", "noseSneerRight", "mouthUpperUpLeft", "mouthUpperUpRight")
    eye_wide = f("eyeWideLeft", "eyeWideRight")
    brow_up = f("browInnerUp", "browOuterUpLeft", "browOuterUpRight")
    jaw = f("jawOpen")
    stretch = f("mouthStretchLeft", "mouthStretchRight")
    cheek = f("cheekSquintLeft", "cheekSquintRight")
    eye_squint = f("eyeSquintLeft", "eyeSquintRight")
    dimple = f("mouthDimpleLeft", "mouthDimpleRight")
    asymmetry = np.abs(x[:, _index()["mouthSmileLeft"]] - x[:, _index()["mouthSmileRight"]])

    # Motion energy: mean absolute frame-to-frame change (expression plus head rotation).
    velocity = np.abs(
        np.diff(coeffs[:, : layout.ROTATION.stop], axis=0, prepend=coeffs[:1, : layout.ROTATION.stop])
    )
    motion = _smooth(velocity.mean(axis=1), 3.0) if len(coeffs) > 1 else np.zeros(len(coeffs))

    out["Valence"] = np.tanh(3.0 * (smile - 0.2) - 4.0 * frown - 2.0 * brow_down - 2.0 * press - 2.0 * sneer)
    out["Arousal"] = np.tanh(2.5 * eye_wide + 1.5 * brow_up + 2.0 * jaw + 40.0 * motion - 0.9)

    scores = np.stack(
        [
            np.full(len(x), 1.5),  # Neutral
            6.0 * smile + 2.0 * cheek,  # Happy
            5.0 * frown + 3.0 * f("browInnerUp") - 3.0 * smile + 0.5,  # Sad
            4.0 * eye_wide + 3.0 * brow_up + 3.0 * jaw,  # Surprise
            4.0 * eye_wide + 2.0 * f("browInnerUp") + 5.0 * stretch,  # Fear
            6.0 * sneer + 2.0 * brow_down,  # Disgust
            5.0 * brow_down + 4.0 * press + 2.0 * eye_squint,  # Anger
            8.0 * asymmetry + 2.0 * dimple,  # Contempt
        ],
        axis=1,
    )
    scores -= scores.max(axis=1, keepdims=True)
    probs = np.exp(scores)
    probs /= probs.sum(axis=1, keepdims=True)
    for k, name in enumerate(layout.EXPRESSION_COLUMNS):
        out[name] = probs[:, k]
    return pd.DataFrame({name: out[name] for name in layout.EMOTION_COLUMNS})


# --------------------------------------------------------------------------------------------------
# Sessions
# --------------------------------------------------------------------------------------------------


@dataclass
class SimulatedSession:
    """One dyad in memory. Person 0 is A (the csv row's first clip), person 1 is B.

    ``coefficients[p]`` float32 ``[frames + 1, 58]``; ``audio[p]`` float32 ``[(frames + 1) * rate / 25]``;
    ``turns``: ``(person, start, end)`` speaking turns in frames (end exclusive); ``utterances[p]``:
    ``(start, end)`` voiced phrases of person ``p`` in frames.
    """

    split: str
    family: int
    session: int  # index within the family
    styles: tuple[str, str]
    delays: tuple[int, int]
    coefficients: tuple[np.ndarray, np.ndarray]
    audio: tuple[np.ndarray, np.ndarray]
    turns: list[tuple[int, int, int]]
    utterances: tuple[list[tuple[int, int]], list[tuple[int, int]]]


_SCRIPT_STREAM, _SESSION_STREAM, _SITE_STREAM = 0, 1, 2


def _rng(seed: int, split: str, family: int, *stream: int) -> np.random.Generator:
    """Independent generator per (seed, split, family, stream...): no draw depends on generation order."""
    return np.random.default_rng([seed, layout.SPLITS.index(split), family, *stream])


@functools.lru_cache(maxsize=8)
def _cached_script(seed: int, split: str, family: int, n: int) -> _Script:
    # Sessions of a family are simulated one after the other, so the script is built once.
    return _family_script(_rng(seed, split, family, _SCRIPT_STREAM), n)


def simulate_session(
    spec: SyntheticSpec,
    split: str,
    family: int,
    session: int,
    styles: tuple[int, int] | None = None,
) -> SimulatedSession:
    """Simulate session ``session`` (0-based, within the family) of family ``family`` of ``split``.

    ``styles`` forces the two persons' style indices (into :data:`STYLES`) instead of the drawn ones;
    every other draw stays the same, so a forced session differs from the drawn one only by style.
    """
    if split not in layout.SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {layout.SPLITS}")
    if not 0 <= session < spec.sessions_per_family:
        raise ValueError(f"session must be in [0, {spec.sessions_per_family}), got {session}")
    n = spec.frames + 1
    script = _cached_script(spec.seed, split, family, n)
    rng = _rng(spec.seed, split, family, _SESSION_STREAM, session)
    drawn = tuple(int(s) for s in rng.integers(spec.n_styles, size=2))
    chosen = drawn if styles is None else tuple(styles)
    delays = tuple(int(d) for d in rng.integers(6, 12, size=2))  # 0.24-0.44 s plus ~0.1 s of easing
    real = _realise(script, rng)

    audio, drives = [], []
    for p in range(2):
        turns = [t for t in real.turns if t.person == p]
        syllables = [y for t in turns for ph in t.phrases for y in ph.syllables]
        wav, open_env, round_env = _voice(syllables, n, spec.sample_rate, rng)
        audio.append(wav)
        drives.append(_script_drive(turns, n, open_env, round_env))
    faces = tuple(
        _face(rng, n, drives[p], drives[1 - p], STYLES[chosen[p]], delays[p], real.expressivity[p])
        for p in range(2)
    )
    clamp = lambda v: int(np.clip(round(v), 0, n))  # noqa: E731
    return SimulatedSession(
        split=split,
        family=family,
        session=session,
        styles=(STYLES[chosen[0]].name, STYLES[chosen[1]].name),
        delays=(delays[0], delays[1]),
        coefficients=(faces[0], faces[1]),
        audio=(audio[0], audio[1]),
        turns=[(t.person, clamp(t.start), clamp(t.end)) for t in real.turns],
        utterances=tuple(
            [(clamp(ph.start), clamp(ph.end)) for t in real.turns if t.person == p for ph in t.phrases]
            for p in range(2)
        ),
    )


# --------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """Where one session goes: its split, family, index in family, csv row and clip ids."""

    split: str
    family: int
    session: int
    row: int
    clips: tuple[str, str]


def _site_of(spec: SyntheticSpec, split: str, family: int) -> tuple[str, str]:
    rng = _rng(spec.seed, split, family, _SITE_STREAM)
    site = "NoXI" if rng.random() < 0.6 else "RECOLA"
    cities = _SITES[site][1]
    return site, cities[int(rng.integers(len(cities)))]


def corpus_slots(spec: SyntheticSpec) -> dict[str, list[_Slot]]:
    """Every session's place in the corpus, per split, in csv row order (family-major)."""
    slots: dict[str, list[_Slot]] = {}
    number = 0
    for split in layout.SPLITS:
        rows = []
        for family in range(spec.families.get(split, 0)):
            site, city = _site_of(spec, split, family)
            persons = _SITES[site][0]
            for session in range(spec.sessions_per_family):
                number += 1
                day = _FIRST_DAY + datetime.timedelta(days=number)
                folder = f"{number:03d}_{day.isoformat()}_{city}"
                clips = tuple(f"{site}/{folder}/{person}/{_CLIP_NAME}" for person in persons)
                rows.append(_Slot(split, family, session, len(rows), (clips[0], clips[1])))
        if rows:
            slots[split] = rows
    return slots


def neighbour_matrix(slots: Sequence[_Slot]) -> np.ndarray:
    """Bool ``[2 * rows, 2 * rows]``: same family and same role (A->B examples vs B->A examples)."""
    rows = len(slots)
    family = np.array([s.family for s in slots] * 2)
    role = np.repeat([0, 1], rows)
    return (family[:, None] == family[None, :]) & (role[:, None] == role[None, :])


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _emotion_csv_bytes(face: np.ndarray) -> bytes:
    """The emotion csv of a clip: header, then AU occurrences as 0/1 and the rest with 6 decimals."""
    table = emotion_from_coefficients(face).to_numpy()
    buf = io.StringIO()
    fmt = ["%d"] * len(layout.AU_COLUMNS) + ["%.6f"] * (len(layout.EMOTION_COLUMNS) - len(layout.AU_COLUMNS))
    np.savetxt(buf, table, fmt=fmt, delimiter=",", header=",".join(layout.EMOTION_COLUMNS), comments="")
    return buf.getvalue().encode()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_session(root: Path, spec: SyntheticSpec, slot: _Slot) -> dict:
    sim = simulate_session(spec, slot.split, slot.family, slot.session)
    for p, clip in enumerate(slot.clips):
        face = sim.coefficients[p]
        _write_bytes(layout.clip_path(root, slot.split, "face", clip), _npy_bytes(face))
        _write_bytes(
            layout.clip_path(root, slot.split, "audio", clip), _wav_bytes(sim.audio[p], spec.sample_rate)
        )
        _write_bytes(layout.clip_path(root, slot.split, "emotion", clip), _emotion_csv_bytes(face))
    return {
        "row": slot.row,
        "family": slot.family,
        "session_in_family": slot.session,
        "clips": list(slot.clips),
        "styles": list(sim.styles),
        "delays": list(sim.delays),
        "turns": [list(t) for t in sim.turns],
        "utterances": [[list(u) for u in us] for us in sim.utterances],
    }


def _write_session_job(args: tuple[Path, SyntheticSpec, _Slot]) -> dict:
    return _write_session(*args)


def generate_corpus(root: Path, spec: SyntheticSpec, *, workers: int = 1, progress: bool = False) -> dict:
    """Write the synthetic corpus for ``spec`` under ``root`` in the REACT2024 layout.

    Writes per split ``<split>.csv``, ``neighbour_emotion_<split>.npy`` and the clip files, plus
    ``synthetic_meta.json`` (ground truth). Every file is written atomically; files already under
    ``root`` at other paths (from a differently sized spec) are left alone, so generate into a fresh
    folder (a DVC stage output is removed before its stage runs). ``workers > 1`` simulates
    sessions in that many processes; the bytes written do not depend on it. Returns a summary:
    ``{"root": str, "splits": {split: {"families", "dyads", "examples", "clips"}}}``.
    """
    spec.validate()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    slots = corpus_slots(spec)
    jobs = [(root, spec, slot) for split_slots in slots.values() for slot in split_slots]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="synthetic sessions", unit="session")
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = []
            for record in pool.map(_write_session_job, jobs, chunksize=4):
                records.append(record)
                if bar is not None:
                    bar.update()
    else:
        records = []
        for job in jobs:
            records.append(_write_session_job(job))
            if bar is not None:
                bar.update()
    if bar is not None:
        bar.close()

    meta_splits: dict[str, list[dict]] = {}
    summary: dict[str, dict[str, int]] = {}
    it = iter(records)
    for split, split_slots in slots.items():
        lines = ["id,speaker_path,listener_path"] + [
            f"{s.row},{s.clips[0]},{s.clips[1]}" for s in split_slots
        ]
        _write_bytes(layout.split_list_path(root, split), ("\n".join(lines) + "\n").encode())
        _write_bytes(layout.neighbour_path(root, split), _npy_bytes(neighbour_matrix(split_slots)))
        meta_splits[split] = [next(it) for _ in split_slots]
        summary[split] = {
            "families": spec.families[split],
            "dyads": len(split_slots),
            "examples": 2 * len(split_slots),
            "clips": 2 * len(split_slots),
        }
    meta = {
        "generator": "reactdiff.synthetic",
        "spec": asdict(spec),
        "styles": list(STYLE_NAMES[: spec.n_styles]),
        "fps": layout.FPS,
        "file_frames": spec.frames + 1,
        "splits": meta_splits,
    }
    write_json(meta, root / META_FILE)
    return {"root": str(root), "splits": summary}


def load_meta(root: Path) -> dict:
    """The ground truth written next to a synthetic corpus (``<root>/synthetic_meta.json``)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a synthetic corpus (no {META_FILE}); generate one with generate_corpus"
        )
    return json.loads(path.read_text())
