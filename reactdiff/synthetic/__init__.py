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

from reactdiff.synthetic.actions import ACTION_NAMES, ACTIONS, STYLE_NAMES, STYLES, Style, loading_matrix
from reactdiff.synthetic.emotion import AU_RULES, emotion_from_coefficients
from reactdiff.synthetic.faces import enforce_exclusive
from reactdiff.synthetic.sessions import (
    SimulatedSession,
    corpus_slots,
    generate_corpus,
    load_meta,
    neighbour_matrix,
    simulate_session,
)
from reactdiff.synthetic.spec import ACTIVE_LEVEL, META_FILE, SyntheticSpec, preset

__all__ = [
    "ACTIONS",
    "ACTION_NAMES",
    "ACTIVE_LEVEL",
    "AU_RULES",
    "META_FILE",
    "STYLES",
    "STYLE_NAMES",
    "SimulatedSession",
    "Style",
    "SyntheticSpec",
    "corpus_slots",
    "emotion_from_coefficients",
    "enforce_exclusive",
    "generate_corpus",
    "load_meta",
    "loading_matrix",
    "neighbour_matrix",
    "preset",
    "simulate_session",
]
