"""Emotion annotations (valence, arousal, eight expression probabilities) derived from coefficients."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from reactdiff import layout
from reactdiff.synthetic.actions import _index
from reactdiff.synthetic.signals import _smooth

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
