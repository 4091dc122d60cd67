"""A person's face over a session: speaking from the script, listening by reacting to the partner."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from reactdiff import layout, reference
from reactdiff.synthetic.actions import ACTION_NAMES, Style, _rest_expression, loading_matrix
from reactdiff.synthetic.script import _Turn
from reactdiff.synthetic.signals import _delay, _nod, _ou, _pulses, _smooth
from reactdiff.synthetic.spec import ACTIVE_LEVEL

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
