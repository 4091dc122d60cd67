"""The latent actions of a face, their loadings on the 52 blendshapes, and the listener styles."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from reactdiff import layout, reference


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
