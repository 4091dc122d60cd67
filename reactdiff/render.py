"""Rendering FaceVerse coefficients to faces, reaction videos and coefficient plots, without any weights.

The paper renders its 58 coefficients per frame through PIRender and the FaceVerse model, whose weights
are licensed downloads. This module ships a weight-free renderer instead and a seam to plug a neural
renderer in later:

- :class:`FaceRenderer`: the contract, ``render(coeffs [frames, 58]) -> uint8 [frames, size, size, 3]``.
- :class:`CartoonRenderer`: a parametric cartoon head. The head (cranium and jaw), ears, neck and
  shoulders are ray-cast ellipsoids with Lambert shading and a hairline; the face is drawn over them as
  antialiased vector shapes. Each of the 52 ARKit blendshapes drives a visible part of the face; head
  rotation and translation turn and move the head.
- :func:`build_renderer` / :func:`register_renderer`: the registry that the ``render`` stage goes through.
- :func:`compose_grid`, :func:`write_video`, :func:`probe_video`, :func:`write_reaction_video`: the speaker
  beside the real and the M generated listener reactions, as H.264 MP4 at 25 fps with the speaker's audio
  (through the ffmpeg binary that ``imageio-ffmpeg`` ships).
- :func:`plot_coefficients`, :func:`plot_metric_bars`: PNG figures (matplotlib, Agg).

Conventions of the cartoon renderer (all in one place so that they are easy to correct):

- **Left/right.** ARKit names sides from the subject's point of view: ``...Left`` is the subject's left,
  which appears on the *image right* (the camera is not mirrored). FaceVerse's x axis also points to the
  image right.
- **Neutral.** Expression weights 0 are the neutral face (ARKit semantics); weights are clipped to
  ``[0, 1]``. Head pose is rendered *relative to the mean pose of real REACT faces*
  (:func:`reactdiff.reference.coefficient_stats`), because FaceVerse's first rotation angle sits near
  pi (its mesh is stored upside down and facing away, and the fit rotates it by pi about x).
  :func:`neutral_coefficients` returns zeros for the expression and the mean pose.
- **Rotation.** FaceVerse composes ``R = Rz(a2) @ Ry(a1) @ Rx(a0)`` (x, y, z Euler angles) in a frame with
  x to the image right, y up and z towards the camera. Hence dims ``52, 53, 54`` are pitch, yaw and roll
  (:data:`PITCH_DIM`, :data:`YAW_DIM`, :data:`ROLL_DIM`); their real standard deviations (0.18, 0.35,
  0.13 rad) agree with yaw being the largest head motion in conversation. With the signs in
  :data:`ROTATION_SIGNS`, positive pitch turns the face down (nodding), positive yaw turns it towards the
  image right (the subject's left) and positive roll tilts the head counter-clockwise in the image. The
  renderer uses the same composition order; deltas are wrapped to ``(-pi, pi]`` and clipped to
  :data:`MAX_ROTATION` so that the cartoon never shows the back of its head.
- **Translation.** FaceVerse's camera sits at z = 10 looking down -z with a focal length of 1315 px for a
  256 px image. A translation delta ``(dx, dy)`` therefore moves the face by ``1315 / (10 - tz)`` pixels
  per unit (scaled to the output size; +x right, +y up), and a larger ``tz`` brings the head closer:
  the face is scaled by ``(10 - mean_tz) / (10 - tz)``. Shifts and zoom are clipped to keep the face in
  the frame (:data:`MAX_SHIFT`, :data:`ZOOM_RANGE`).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reactdiff.layout import FPS, MODEL_SAMPLE_RATE, N_COEFFS, N_EXPRESSION
from reactdiff.reference import POSE_NAMES, coefficient_stats, expression_names

# --- FaceVerse pose conventions (see the module docstring) -------------------------------------------
PITCH_DIM, YAW_DIM, ROLL_DIM = 52, 53, 54
TX_DIM, TY_DIM, TZ_DIM = 55, 56, 57
ROTATION_SIGNS = (1.0, 1.0, 1.0)  # pitch, yaw, roll: multiply FaceVerse's angle deltas by these
MAX_ROTATION = (0.6, 0.8, 0.7)  # radians; pitch, yaw, roll deltas are clipped to +- these
FACEVERSE_CAMERA_Z = 10.0
FACEVERSE_FOCAL_PX = 1315.0
FACEVERSE_IMAGE_PX = 256.0
MAX_SHIFT = 0.2  # largest translation shift, as a fraction of the image size
ZOOM_RANGE = (0.8, 1.25)
POSE_DIMS = {"pitch": PITCH_DIM, "yaw": YAW_DIM, "roll": ROLL_DIM, "tx": TX_DIM, "ty": TY_DIM, "tz": TZ_DIM}
# the coefficients the paper names as examples of interpretable ones (section 5.1): a default for plots
PAPER_PLOT_DIMS = ("browInnerUp", "eyeLookDownRight", "jawOpen", "mouthFunnel", "noseSneerRight", "tongueOut")

# --- cartoon geometry: head units (half the head width); head frame x = image right, y up, z to camera ---
SUPERSAMPLE = 2  # the face's vector shapes are drawn at this multiple of the output size, then box-filtered
_HEAD_SCALE = 0.235  # pixels per head unit, as a fraction of the image size
_ORIGIN = (0.5, 0.42)  # where the head frame's origin lands, as fractions of the image (x, y down)
_PIVOT = np.array([0.0, -0.55, -0.15])  # the head turns about the top of the neck
_CRANIUM = (np.array([0.0, 0.22, -0.05]), np.array([1.0, 1.22, 1.08]))
_JAW = (np.array([0.0, -0.42, 0.02]), np.array([0.80, 0.88, 0.92]))
_JAW_HINGE_Y = 0.0  # jawLeft/Right/Forward swing the chin about this height
_EAR = (np.array([0.97, -0.02, -0.12]), np.array([0.11, 0.27, 0.17]))
_TORSO = (np.array([0.0, -2.95, -0.75]), np.array([2.1, 1.25, 1.0]))
_NECK = (0.0, -0.3, 0.42)  # x, z and radius of the neck cylinder
_SEAM_BLEND = 0.12  # depth band (head units) over which cranium and jaw normals are blended
_LIGHT = (np.array([-0.35, 0.3, 0.89]) / np.linalg.norm([-0.35, 0.3, 0.89])).astype(np.float32)

_BACKGROUND = (222, 228, 235)
# per-pixel colours are [3, 1, 1]: the ray-casting works on planar [3, h, w] blocks, whose broadcasts are fast
_SKIN = np.array([236.0, 190.0, 158.0], np.float32)[:, None, None]
_EAR_SKIN = np.array([226.0, 172.0, 142.0], np.float32)[:, None, None]
_HAIR = np.array([82.0, 58.0, 44.0], np.float32)[:, None, None]
_SHIRT = np.array([72.0, 108.0, 156.0], np.float32)[:, None, None]
_BROW = (72, 50, 38)
_LID = (58, 38, 34)
_EYE_WHITE = (250, 249, 247)
_EYE_SHADOW = (206, 196, 194)
_IRIS = (86, 118, 150)
_PUPIL = (22, 22, 28)
_LIP_UPPER = (186, 88, 92)
_LIP_LOWER = (204, 108, 110)
_LIP_LINE = (104, 40, 46)
_MOUTH_INSIDE = (88, 28, 36)
_TEETH = (246, 244, 236)
_TONGUE = (226, 110, 140)
_CREASE = (150, 92, 72)  # folds and wrinkles, drawn with an alpha that the expression sets
_BLUSH = (232, 118, 118)
_SHINE = (255, 244, 236)

_EIDX = {name: i for i, name in enumerate(expression_names())}

# fixed sample grids (building them per frame would cost more than the drawing)
_T_EYE = np.linspace(0.0, 1.0, 11)
_BUMP_EYE = np.sin(np.pi * _T_EYE**0.85)
_T_BROW = np.linspace(0.0, 1.0, 9)
_T_MOUTH = np.linspace(-1.0, 1.0, 21)  # -1: the right corner (image left), +1: the left corner
_MID_MOUTH = 10
_TEETH_SPAN = np.abs(_T_MOUTH) < 0.62
_T_BEZIER = np.linspace(0.0, 1.0, 9)
_T_ARC5 = np.linspace(0.0, 1.0, 5)
_T_ARC7 = np.linspace(-1.0, 1.0, 7)


def _circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.cos(th), np.sin(th)


_C8, _C12, _C16, _C20 = _circle(8), _circle(12), _circle(16), _circle(20)
_APPLE_TH = np.linspace(1.15 * np.pi, 1.85 * np.pi, 7)
_APPLE_COS, _APPLE_SIN = np.cos(_APPLE_TH), np.sin(_APPLE_TH)
_WING_TH = np.linspace(-1.9, 1.9, 9)
_WING_COS, _WING_SIN = np.cos(_WING_TH), np.sin(_WING_TH)


def _smooth(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


@runtime_checkable
class FaceRenderer(Protocol):
    """Anything that turns FaceVerse coefficients into square RGB frames.

    ``render(coeffs)`` takes ``float [frames, 58]`` (52 expression, 3 rotation, 3 translation) and returns
    ``uint8 [frames, size, size, 3]``. It must be deterministic: the same coefficients give the same bytes.
    """

    size: int

    def render(self, coeffs: np.ndarray) -> np.ndarray: ...


def neutral_coefficients() -> np.ndarray:
    """``float [58]``: all expression weights 0 (the neutral face) and the mean real head pose."""
    mean, _ = coefficient_stats()
    out = np.zeros(N_COEFFS, np.float64)
    out[N_EXPRESSION:] = mean[N_EXPRESSION:]
    return out


def coefficient_index(dim: int | str) -> int:
    """Index into the 58 coefficients of an expression name, a pose name (:data:`POSE_NAMES`) or an int."""
    if isinstance(dim, (int, np.integer)):
        if not 0 <= int(dim) < N_COEFFS:
            raise ValueError(f"coefficient index {dim} is outside 0..{N_COEFFS - 1}")
        return int(dim)
    if dim in _EIDX:
        return _EIDX[dim]
    if dim in POSE_DIMS:
        return POSE_DIMS[dim]
    raise ValueError(
        f"unknown coefficient {dim!r}: use an index, an ARKit expression name or one of {POSE_NAMES}"
    )


def coefficient_name(index: int) -> str:
    """Inverse of :func:`coefficient_index` for ``0 <= index < 58``."""
    if index < N_EXPRESSION:
        return expression_names()[index]
    return {v: k for k, v in POSE_DIMS.items()}[index]


def _rotations(pitch: np.ndarray, yaw: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """FaceVerse's ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` ``[frames, 3, 3]`` (x right, y up, z to the camera)."""
    n = len(pitch)
    cx, sx, cy, sy, cz, sz = (
        np.cos(pitch),
        np.sin(pitch),
        np.cos(yaw),
        np.sin(yaw),
        np.cos(roll),
        np.sin(roll),
    )
    rx = np.zeros((n, 3, 3))
    rx[:, 0, 0], rx[:, 1, 1], rx[:, 1, 2], rx[:, 2, 1], rx[:, 2, 2] = 1, cx, -sx, sx, cx
    ry = np.zeros((n, 3, 3))
    ry[:, 1, 1], ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = 1, cy, sy, -sy, cy
    rz = np.zeros((n, 3, 3))
    rz[:, 2, 2], rz[:, 0, 0], rz[:, 0, 1], rz[:, 1, 0], rz[:, 1, 1] = 1, cz, -sz, sz, cz
    return rz @ ry @ rx


@dataclass
class _Poses:
    """Per-frame rigid placement of the head: ``R [T, 3, 3]`` head -> camera, the pixel position of the
    head frame's origin ``ox, oy [T]`` and the scale ``unit [T]`` (pixels per head unit)."""

    R: np.ndarray
    ox: np.ndarray
    oy: np.ndarray
    unit: np.ndarray
    zoom: np.ndarray


@dataclass
class _Item:
    kind: str  # polygon | line | eye | mouth
    sl: slice  # its points in the batch's point arrays
    colour: tuple[int, int, int]
    alpha: list[int]  # per frame; 0 skips the item
    width: list[int] | None = None  # per frame, supersampled pixels (lines)
    extra: dict | None = None


_Arr = float | np.ndarray  # a scalar or anything that broadcasts to [T, n]


class _Shapes:
    """Face shapes for a batch of ``T`` frames, in head units, so that all points project in one call.

    Coordinates are ``[T, n]`` arrays (or anything that broadcasts to it); ``dz`` lifts points off the head
    surface (the nose and lips stand out of it).
    """

    def __init__(self, frames: int) -> None:
        self.T = frames
        self.items: list[_Item] = []
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._dz: list[np.ndarray] = []
        self._n = 0

    def points(self, x: _Arr, y: _Arr, dz: _Arr = 0.0) -> slice:
        shape = np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(dz), (self.T, 1))
        x, y, dz = (np.broadcast_to(np.asarray(a, float), shape) for a in (x, y, dz))
        self._x.append(x)
        self._y.append(y)
        self._dz.append(dz)
        sl = slice(self._n, self._n + x.shape[1])
        self._n += x.shape[1]
        return sl

    def _alpha(self, alpha: _Arr) -> list[int]:
        a = np.clip(np.round(np.broadcast_to(np.asarray(alpha, float).reshape(-1), (self.T,))), 0, 255)
        return a.astype(int).tolist()

    def polygon(
        self, x: _Arr, y: _Arr, colour: tuple[int, int, int], alpha: _Arr = 255.0, dz: _Arr = 0.0
    ) -> None:
        self.items.append(_Item("polygon", self.points(x, y, dz), colour, self._alpha(alpha)))

    def line(
        self, x: _Arr, y: _Arr, colour: tuple[int, int, int], alpha: _Arr, width: _Arr, dz: _Arr = 0.0
    ) -> None:
        """``width`` in head units (scalar or ``[T, 1]``); turned into pixels by :meth:`finish`."""
        item = _Item("line", self.points(x, y, dz), colour, self._alpha(alpha))
        item.extra = {"w": np.broadcast_to(np.asarray(width, float).reshape(-1), (self.T,))}
        self.items.append(item)

    def special(self, kind: str, x: _Arr, y: _Arr, visible: _Arr, dz: _Arr = 0.0, **extra: object) -> None:
        """An eye or the mouth: drawn by a paste through the opening's mask, where ``visible`` ([T, 1])."""
        self.items.append(
            _Item(kind, self.points(x, y, dz), (0, 0, 0), self._alpha(255.0 * visible), extra=extra)
        )

    def finish(self, unit_ss: np.ndarray) -> None:
        for item in self.items:
            if item.kind == "line":
                item.width = np.maximum(1, np.round(item.extra.pop("w") * unit_ss)).astype(int).tolist()

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.concatenate(self._x, 1), np.concatenate(self._y, 1), np.concatenate(self._dz, 1)


class CartoonRenderer:
    """Weight-free cartoon face driven by FaceVerse coefficients (see the module docstring for conventions).

    Per frame, the head (the union of a cranium and a jaw ellipsoid, their shading normals blended across
    the seam) and the ears are ray-cast against a cached body layer (neck and shoulders); the jaw ellipsoid
    follows ``jawOpen``, ``jawLeft/Right`` and ``jawForward`` and widens with ``cheekPuff``. Brows, eyes,
    nose, cheeks, folds, mouth, teeth and tongue are then drawn as vector shapes at :data:`SUPERSAMPLE`
    times the size and box-filtered down. Every face point lies on the head surface, is rotated with the
    head and projected orthographically, so head turns look like turns. The face geometry of a whole batch
    of frames is computed at once, which is what makes it fast.

    What each blendshape draws (``...Left`` on the subject's left, the image right):

    - brows: ``browDown`` lowers the brow, inner end most, pulled in, with a frown line between the brows;
      ``browInnerUp`` raises both inner ends (forehead lines); ``browOuterUp`` raises the outer end.
    - eyes: ``eyeBlink`` closes the upper lid; ``eyeSquint`` raises the lower lid (a line under the eye);
      ``eyeWide`` opens both lids (the crease rises); ``eyeLookIn/Out/Up/Down`` move iris and pupil (in =
      towards the nose), the upper lid following up and down.
    - cheeks: ``cheekPuff`` widens the lower face, shiny round cheeks, a narrower mouth; ``cheekSquint``
      lifts the cheek apple (with a crease under it) and the lower lid.
    - nose: ``noseSneer`` lifts and flares the nostril wing, wrinkles that flank, deepens the fold.
    - jaw: ``jawOpen`` stretches the jaw down and opens the mouth (teeth, tongue); ``jawLeft/Right`` swing
      chin and lower lip sideways; ``jawForward`` thrusts the chin (thicker lower lip, lower teeth show).
    - mouth: ``mouthSmile`` corner up and out (cheek up, fold); ``mouthFrown`` corner down (marionette
      line); ``mouthStretch`` corner out and down, thin parted lips; ``mouthDimple`` corner back with a
      dimple; ``mouthPress`` thinner lips, darker seam; ``mouthPucker`` small thick closed lips with
      wrinkles; ``mouthFunnel`` a small round opening with everted lips; ``mouthRollUpper/Lower`` roll a lip
      in (it thins away); ``mouthShrugUpper`` raises the upper lip, ``mouthShrugLower`` pushes the lower
      lip up (chin wrinkles); ``mouthUpperUp`` / ``mouthLowerDown`` bare the upper / lower teeth on that
      side; ``mouthClose`` presses the lips together even with the jaw open; ``mouthLeft/Right`` shift the
      mouth; ``tongueOut`` pushes the tongue out over the lower lip, parting the lips.
    """

    def __init__(self, size: int = 256, batch: int = 256) -> None:
        if size < 32:
            raise ValueError(f"size {size} is too small to draw a face; use at least 32 pixels")
        self.size = int(size)
        self.batch = int(batch)
        mean, _ = coefficient_stats()
        self._mean_pose = mean[N_EXPRESSION:].copy()
        self._centres = np.arange(self.size, dtype=np.float32) + 0.5
        self._margin = int(math.ceil(MAX_SHIFT * self.size)) + 2
        self._bodies: dict[int, np.ndarray] = {}

    # -- public -----------------------------------------------------------------------------------------
    def render(self, coeffs: np.ndarray) -> np.ndarray:
        """``float [frames, 58]`` (or ``[58]``) -> ``uint8 [frames, size, size, 3]``."""
        coeffs = self._check(coeffs)
        out = np.empty((len(coeffs), self.size, self.size, 3), np.uint8)
        for start in range(0, len(coeffs), self.batch):
            self._render_batch(coeffs[start : start + self.batch], out[start : start + self.batch])
        return out

    def landmarks(self, coeffs: np.ndarray) -> dict[str, np.ndarray]:
        """Pixel positions ``float [2]`` (x right, y down) of named face points for one frame ``[58]``.

        Names: ``eye_left``/``eye_right`` (eye centres), ``brow_left``/``brow_right`` (brow middles),
        ``nose_tip``, ``cheek_left``/``cheek_right``, ``mouth_left``/``mouth_right`` (corners),
        ``mouth_centre``, ``chin``; ``left`` is the subject's left (image right).
        """
        c = self._check(np.asarray(coeffs, np.float64).reshape(1, N_COEFFS))
        e = np.clip(c[:, :N_EXPRESSION], 0.0, 1.0)
        poses = self._poses(c)
        jaw, jaw_c, jaw_q = self._jaws(e)
        named = {
            "eye_left": (0.385, 0.06, 0.0),
            "eye_right": (-0.385, 0.06, 0.0),
            "brow_left": (0.38, 0.34, 0.0),
            "brow_right": (-0.38, 0.34, 0.0),
            "nose_tip": (0.0, -0.33, 0.3),
            "cheek_left": (0.55, -0.37, 0.0),
            "cheek_right": (-0.55, -0.37, 0.0),
            "mouth_left": (0.29, -0.76, 0.05),
            "mouth_right": (-0.29, -0.76, 0.05),
            "mouth_centre": (0.0, -0.76, 0.05),
            "chin": (float(jaw[0, 0]), -1.18 + float(jaw[0, 1]), 0.0),
        }
        pts = np.array(list(named.values()))
        px = self._project(pts[None, :, 0], pts[None, :, 1], pts[None, :, 2], poses, jaw_c, jaw_q)[0]
        return {k: px[i] / SUPERSAMPLE for i, k in enumerate(named)}

    # -- batch pipeline -----------------------------------------------------------------------------------
    @staticmethod
    def _check(coeffs: np.ndarray) -> np.ndarray:
        coeffs = np.asarray(coeffs, dtype=np.float64)
        if coeffs.ndim == 1:
            coeffs = coeffs[None]
        if coeffs.ndim != 2 or coeffs.shape[1] != N_COEFFS:
            raise ValueError(f"expected coefficients [frames, {N_COEFFS}], got shape {coeffs.shape}")
        if not np.isfinite(coeffs).all():
            raise ValueError("coefficients contain NaN or infinite values; nothing sensible can be drawn")
        return coeffs

    def _render_batch(self, c: np.ndarray, out: np.ndarray) -> None:
        e = np.clip(c[:, :N_EXPRESSION], 0.0, 1.0)
        poses = self._poses(c)
        jaw, jaw_c, jaw_q = self._jaws(e)
        shapes = self._face_shapes(e, jaw)
        x, y, dz = shapes.arrays()
        px = self._project(x, y, dz, poses, jaw_c, jaw_q)  # [T, N, 2], supersampled pixels
        shapes.finish(poses.unit * SUPERSAMPLE)
        # the face crop to supersample: all face points, a margin for line widths, inside the image
        lo = np.clip(np.floor(px.min(1) / SUPERSAMPLE) - 3, 0, self.size).astype(int)
        hi = np.clip(np.ceil(px.max(1) / SUPERSAMPLE) + 4, 0, self.size).astype(int)
        local = (px - SUPERSAMPLE * lo[:, None, :]).reshape(len(c), -1)
        head = self._head_geometry(poses, jaw_c, jaw_q)
        for f in range(len(c)):
            frame = self._body(poses, f)
            self._head(frame, head, f, poses)
            x0, y0 = lo[f]
            x1, y1 = hi[f]
            if x1 - x0 > 2 and y1 - y0 > 2:
                crop = Image.fromarray(frame[y0:y1, x0:x1]).resize(
                    ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE), Image.Resampling.NEAREST
                )
                self._draw(crop, shapes, f, local[f].tolist(), float(poses.unit[f]) * SUPERSAMPLE)
                frame[y0:y1, x0:x1] = np.asarray(crop.reduce(SUPERSAMPLE))
            out[f] = frame

    # -- pose and projection ----------------------------------------------------------------------------
    def _poses(self, c: np.ndarray) -> _Poses:
        d = c[:, N_EXPRESSION:] - self._mean_pose
        ang = (d[:, :3] + math.pi) % (2 * math.pi) - math.pi
        ang = np.clip(ang * np.asarray(ROTATION_SIGNS), -np.asarray(MAX_ROTATION), np.asarray(MAX_ROTATION))
        depth = np.maximum(FACEVERSE_CAMERA_Z - c[:, TZ_DIM], 1e-3)
        zoom = np.clip((FACEVERSE_CAMERA_Z - self._mean_pose[5]) / depth, *ZOOM_RANGE)
        px_per_unit = FACEVERSE_FOCAL_PX / depth * self.size / FACEVERSE_IMAGE_PX
        lim = MAX_SHIFT * self.size
        return _Poses(
            R=_rotations(ang[:, 0], ang[:, 1], ang[:, 2]),
            ox=_ORIGIN[0] * self.size + np.clip(d[:, 3] * px_per_unit, -lim, lim),
            oy=_ORIGIN[1] * self.size + np.clip(-d[:, 4] * px_per_unit, -lim, lim),
            unit=_HEAD_SCALE * self.size * zoom,
            zoom=zoom,
        )

    @staticmethod
    def _jaws(e: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Chin displacement ``[T, 3]`` (head units) and the jaw quadric: centre ``[T, 3]`` and matrix
        ``Q [T, 3, 3]`` with ``(p - centre)^T Q (p - centre) = 1`` in the head frame.

        ``jawOpen`` stretches the jaw downwards (its top stays under the cheeks, so the face lengthens
        without bulging sideways); ``jawLeft/Right`` and ``jawForward`` shear it about a hinge at eye height,
        so the chin swings while the jaw's top, hidden in the cranium, stays put; ``cheekPuff`` widens it.
        """
        j = {n: e[:, _EIDX[n]] for n in ("jawLeft", "jawRight", "jawOpen", "jawForward", "cheekPuff")}
        drop = 0.34 * j["jawOpen"] + 0.05 * j["jawForward"]
        semi = _JAW[1] + np.stack([0.13 * j["cheekPuff"], 0.5 * drop, 0.04 * j["cheekPuff"]], 1)
        centre = _JAW[0] + np.stack([np.zeros_like(drop), -0.5 * drop, np.zeros_like(drop)], 1)
        chin_y = centre[:, 1] - semi[:, 1]
        # shear x and z in proportion to the height below the hinge: the chin moves by (dx, dz)
        kx = 0.17 * (j["jawLeft"] - j["jawRight"]) / (_JAW_HINGE_Y - chin_y)
        kz = 0.16 * j["jawForward"] / (_JAW_HINGE_Y - chin_y)
        shear = np.tile(np.eye(3), (len(e), 1, 1))
        shear[:, 0, 1], shear[:, 2, 1] = -kx, -kz
        inv = np.linalg.inv(shear)
        Q = np.einsum("tji,tj,tjk->tik", inv, 1.0 / semi**2, inv)  # A^-T S^-2 A^-1
        hinge = np.array([0.0, _JAW_HINGE_Y, 0.0])
        centre = np.einsum("tij,tj->ti", shear, centre - hinge) + hinge
        chin = np.stack([0.17 * (j["jawLeft"] - j["jawRight"]), -drop, 0.16 * j["jawForward"]], 1)
        return chin, centre, Q

    @staticmethod
    def _surface_z(x: np.ndarray, y: np.ndarray, jc: np.ndarray, jq: np.ndarray) -> np.ndarray:
        """Front surface depth ``[T, n]`` of the union of cranium and jaw (centre ``[T, 3]``, quadric
        ``[T, 3, 3]``) at head-frame points ``(x, y)``."""
        c, s = _CRANIUM
        q = 1.0 - ((x - c[0]) / s[0]) ** 2 - ((y - c[1]) / s[1]) ** 2
        z = np.where(q > 0, c[2] + s[2] * np.sqrt(np.maximum(q, 0.0)), -1.0)
        dx, dy = x - jc[:, :1], y - jc[:, 1:2]
        a, b = jq[:, 2:3, 2], jq[:, 0:1, 2] * dx + jq[:, 1:2, 2] * dy
        cq = jq[:, 0:1, 0] * dx * dx + 2 * jq[:, 0:1, 1] * dx * dy + jq[:, 1:2, 1] * dy * dy - 1.0
        disc = b * b - a * cq
        zj = np.where(disc > 0, jc[:, 2:3] + (np.sqrt(np.maximum(disc, 0.0)) - b) / a, -1.0)
        return np.maximum(z, zj)

    def _project(
        self,
        x: np.ndarray,
        y: np.ndarray,
        dz: np.ndarray,
        poses: _Poses,
        jaw_c: np.ndarray,
        jaw_q: np.ndarray,
    ) -> np.ndarray:
        """Head-frame surface points ``[T, n]`` (+ depth offsets) -> supersampled pixels ``[T, n, 2]``."""
        z = self._surface_z(x, y, jaw_c, jaw_q) + dz
        p = np.stack([x, y, z], -1) - _PIVOT
        pc = np.einsum("tij,tnj->tni", poses.R, p) + _PIVOT
        px = poses.ox[:, None] + poses.unit[:, None] * pc[..., 0]
        py = poses.oy[:, None] - poses.unit[:, None] * pc[..., 1]
        return np.stack([px, py], -1) * SUPERSAMPLE

    # -- per-pixel head -------------------------------------------------------------------------------------
    def _body(self, poses: _Poses, f: int) -> np.ndarray:
        """Background, neck and shoulders for frame ``f``: a cached layer per zoom step, shifted by whole
        pixels (the head hides where the neck meets it, so a sub-pixel offset there is invisible)."""
        key = int(round(float(poses.zoom[f]) * 50))
        layer = self._bodies.get(key)
        if layer is None:
            if len(self._bodies) > 64:
                self._bodies.pop(next(iter(self._bodies)))
            layer = self._bodies[key] = self._render_body(_HEAD_SCALE * self.size * key / 50)
        m = self._margin
        sx = int(round(float(poses.ox[f]) - _ORIGIN[0] * self.size))
        sy = int(round(float(poses.oy[f]) - _ORIGIN[1] * self.size))
        sx, sy = min(max(sx, -m), m), min(max(sy, -m), m)
        return layer[m - sy : m - sy + self.size, m - sx : m - sx + self.size].copy()

    def _render_body(self, unit: float) -> np.ndarray:
        n = self.size + 2 * self._margin
        ox, oy = self._margin + _ORIGIN[0] * self.size, self._margin + _ORIGIN[1] * self.size
        rgb = np.empty((3, n, n), np.float32)
        rgb[:] = np.asarray(_BACKGROUND, np.float32)[:, None, None]
        zbuf = np.full((n, n), -1e9, np.float32)
        cols = (np.arange(n, dtype=np.float32) + 0.5 - ox) / unit
        rows = (oy - np.arange(n, dtype=np.float32) - 0.5) / unit
        u, v = cols[None, :], rows[:, None]
        cov, z, lam = self._cast(
            u, v, _TORSO[0], np.diag(1.0 / _TORSO[1] ** 2), float(np.sqrt(_TORSO[1][:2].prod())), unit
        )
        self._composite(rgb, zbuf, cov, z, _SHIRT * (0.72 + 0.32 * np.maximum(lam, 0.0)))
        # neck: a vertical cylinder ending in a round collar
        x_c, z_c, r = _NECK
        du = u - x_c
        disc = r * r - du * du
        collar = -1.72 - 0.2 * (1.0 - np.clip(du / r, -1, 1) ** 2)
        cov = (
            np.clip(0.5 + unit * disc / (2 * r), 0, 1) * np.clip(0.5 + unit * (v - collar), 0, 1) * (v < -0.2)
        )
        front = np.sqrt(np.maximum(disc, 0.0))
        lam = (du * _LIGHT[0] + front * _LIGHT[2]) / r
        self._composite(rgb, zbuf, cov, z_c + front + 0 * v, _SKIN * (0.6 + 0.3 * np.maximum(lam, 0.0)))
        return np.ascontiguousarray((np.clip(rgb, 0, 255) + 0.5).astype(np.uint8).transpose(1, 2, 0))

    @staticmethod
    def _cast(
        u: np.ndarray, v: np.ndarray, centre: np.ndarray, Q: np.ndarray, r_eff: float, unit: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Orthographic rays along -z through camera-frame points ``u [1, w]``, ``v [h, 1]`` against the
        ellipsoid ``(p - centre)^T Q (p - centre) = 1``: coverage ``[h, w]`` (antialiased silhouette), depth
        of the front hit (the silhouette's depth outside it) and the Lambert term ``n . light``."""
        q = Q.astype(np.float32)
        du = (u - np.float32(centre[0])).astype(np.float32)
        dv = (v - np.float32(centre[1])).astype(np.float32)
        b = q[0, 2] * du + q[1, 2] * dv
        cq = (q[0, 0] * du * du - 1.0) + dv * (2.0 * q[0, 1] * du + q[1, 1] * dv)
        disc = b * b - q[2, 2] * cq
        # signed distance to the silhouette ~ disc / Q22 * r / 2 (exact for a sphere of radius r)
        cov = np.clip(disc * np.float32(0.5 * unit * r_eff / q[2, 2]) + np.float32(0.5), 0.0, 1.0)
        w = (np.sqrt(np.maximum(disc, 0.0)) - b) / q[2, 2]
        nx = q[0, 0] * du + q[0, 1] * dv + q[0, 2] * w
        ny = q[0, 1] * du + q[1, 1] * dv + q[1, 2] * w
        nz = q[0, 2] * du + q[1, 2] * dv + q[2, 2] * w
        lam = (nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) / np.sqrt(
            nx * nx + ny * ny + nz * nz + 1e-12
        )
        return cov, np.float32(centre[2]) + w, lam

    @staticmethod
    def _composite(
        rgb: np.ndarray, zbuf: np.ndarray, cov: np.ndarray, z: np.ndarray, col: np.ndarray
    ) -> None:
        """Blend ``col [3, h, w]`` over the planar ``rgb [3, h, w]`` where ``z`` is in front of ``zbuf``."""
        a = cov * (z > zbuf)
        rgb += a * (col - rgb)
        # the z-buffer takes the new depth where the surface covers the pixel (masked ops are slow here)
        np.maximum(zbuf, z - (a <= 0.5) * np.float32(1e9), out=zbuf, casting="unsafe")

    def _head_geometry(self, poses: _Poses, jaw_c: np.ndarray, jaw_q: np.ndarray) -> dict[str, np.ndarray]:
        """Camera-frame centres, quadrics and pixel bounding boxes of cranium, jaw and ears, ``[T, ...]``."""
        R = poses.R
        n = len(R)

        def fixed(centre: np.ndarray, semi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return np.broadcast_to(centre, (n, 3)), np.broadcast_to(np.diag(1.0 / semi**2), (n, 3, 3))

        prims = {
            "cranium": fixed(*_CRANIUM),
            "jaw": (jaw_c, jaw_q),
            "ear_l": fixed(*_EAR),
            "ear_r": fixed(_EAR[0] * [-1, 1, 1], _EAR[1]),
        }
        out: dict[str, np.ndarray] = {"R": R, "cranium_s": np.broadcast_to(_CRANIUM[1], (n, 3))}
        boxes = []
        for name, (c, q) in prims.items():
            cc = np.einsum("tij,tj->ti", R, c - _PIVOT) + _PIVOT
            Q = R @ q @ R.transpose(0, 2, 1)
            ext = np.sqrt(np.diagonal(np.linalg.inv(Q), axis1=1, axis2=2))  # silhouette half-extents
            out[name + "_c"], out[name + "_Q"] = cc, Q
            out[name + "_r"] = np.sqrt(ext[:, 0] * ext[:, 1])
            px = poses.ox + poses.unit * cc[:, 0]
            py = poses.oy - poses.unit * cc[:, 1]
            boxes.append(
                np.stack(
                    [
                        px - poses.unit * ext[:, 0],
                        py - poses.unit * ext[:, 1],
                        px + poses.unit * ext[:, 0],
                        py + poses.unit * ext[:, 1],
                    ],
                    1,
                )
            )
        b = np.stack(boxes, 0)
        for k, name in enumerate(prims):
            out[name + "_box"] = np.stack(
                [
                    np.floor(b[k, :, 0]) - 2,
                    np.floor(b[k, :, 1]) - 2,
                    np.ceil(b[k, :, 2]) + 3,
                    np.ceil(b[k, :, 3]) + 3,
                ],
                1,
            ).astype(int)
        out["box"] = np.stack(
            [
                np.clip(np.floor(b[:, :, 0].min(0)) - 2, 0, self.size),
                np.clip(np.floor(b[:, :, 1].min(0)) - 2, 0, self.size),
                np.clip(np.ceil(b[:, :, 2].max(0)) + 3, 0, self.size),
                np.clip(np.ceil(b[:, :, 3].max(0)) + 3, 0, self.size),
            ],
            1,
        ).astype(int)
        # an ear turned towards the camera is drawn after the head, one turned away before it
        out["ear_l_front"] = R[:, 2, 0] > 0.25
        out["ear_r_front"] = -R[:, 2, 0] > 0.25
        return out

    def _head(self, frame: np.ndarray, h: dict[str, np.ndarray], f: int, poses: _Poses) -> None:
        j0, i0, j1, i1 = h["box"][f]
        if j0 >= j1 or i0 >= i1:
            return
        ox, oy, unit = float(poses.ox[f]), float(poses.oy[f]), float(poses.unit[f])
        u = ((self._centres[j0:j1] - ox) / unit)[None, :]
        v = ((oy - self._centres[i0:i1]) / unit)[:, None]
        block = frame[i0:i1, j0:j1].transpose(2, 0, 1).astype(np.float32)  # planar [3, h, w]
        zbuf = np.full(block.shape[1:], -1e9, np.float32)

        def within(name: str) -> tuple[slice, slice] | None:
            """The rows and columns of the block that primitive ``name`` can cover."""
            e0, e1, e2, e3 = h[name + "_box"][f]
            a0, a1 = min(max(e0 - j0, 0), j1 - j0), min(max(e2 - j0, 0), j1 - j0)
            b0, b1 = min(max(e1 - i0, 0), i1 - i0), min(max(e3 - i0, 0), i1 - i0)
            return (slice(b0, b1), slice(a0, a1)) if a0 < a1 and b0 < b1 else None

        def cast(name: str, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return self._cast(
                u[:, cols], v[rows], h[name + "_c"][f], h[name + "_Q"][f], float(h[name + "_r"][f]), unit
            )

        def ear(name: str) -> None:
            box = within(name)
            if box is not None:
                cov, z, lam = cast(name, *box)
                col = _EAR_SKIN * (0.66 + 0.36 * np.maximum(lam, 0.0))
                self._composite(block[:, box[0], box[1]], zbuf[box], cov, z, col)

        for name in ("ear_l", "ear_r"):
            if not h[name + "_front"][f]:
                ear(name)
        full = (slice(None), slice(None))
        cov_c, z_c, lam_c = cast("cranium", *full)
        zc = z_c - (cov_c <= 0) * np.float32(1e9)
        # the jaw is cast over its own, smaller box only
        cov_j, zj, lam_j = np.zeros_like(cov_c), np.full_like(zc, -1e9), np.zeros_like(lam_c)
        box = within("jaw")
        if box is not None:
            cov, z, lam = cast("jaw", *box)
            cov_j[box], zj[box], lam_j[box] = cov, z - (cov <= 0) * np.float32(1e9), lam
        # blend the two shading terms across the seam so the union reads as one smooth head
        wj = np.clip((zj - zc) * np.float32(1.0 / _SEAM_BLEND) + np.float32(0.5), 0.0, 1.0)
        lam = lam_c + wj * (lam_j - lam_c)
        shade = np.float32(0.7) + np.float32(0.34) * np.maximum(lam, 0.0)
        # hair: where the cranium's hit point, in its own normalised frame, lies above the hairline
        R, c, s = h["R"][f], h["cranium_c"][f], h["cranium_s"][f]
        w = z_c - np.float32(c[2])
        du, dv = u - np.float32(c[0]), v - np.float32(c[1])
        rt = (R.T / s[:, None]).astype(np.float32)
        hx = rt[0, 0] * du + rt[0, 1] * dv + rt[0, 2] * w
        hy = rt[1, 0] * du + rt[1, 1] * dv + rt[1, 2] * w
        hz = rt[2, 0] * du + rt[2, 1] * dv + rt[2, 2] * w
        back = np.float32(0.5) - np.float32(0.5) * hz / np.sqrt(hx * hx + hz * hz + np.float32(1e-6))
        hairline = (
            np.float32(0.6) - back * (np.float32(1.15) - np.float32(0.1) * back) + np.float32(0.08) * hx
        )
        hair_a = np.clip((hy - hairline) * np.float32(unit * s[1]) + np.float32(0.5), 0.0, 1.0) * (1.0 - wj)
        col = (_SKIN + hair_a * (_HAIR - _SKIN)) * shade
        self._composite(block, zbuf, np.maximum(cov_c, cov_j), np.maximum(zc, zj), col)
        for name in ("ear_l", "ear_r"):
            if h[name + "_front"][f]:
                ear(name)
        np.clip(block, 0, 255, out=block)
        block += np.float32(0.5)
        out = frame[i0:i1, j0:j1]
        for k in range(3):  # per channel: writing a transposed block in one go is several times slower
            out[..., k] = block[k]

    # -- face shapes (head frame, whole batch) ------------------------------------------------------------
    def _face_shapes(self, e: np.ndarray, jaw: np.ndarray) -> _Shapes:
        sh = _Shapes(len(e))

        def g(name: str) -> np.ndarray:
            return e[:, _EIDX[name], None]  # [T, 1]

        for side, s in (("Left", 1.0), ("Right", -1.0)):
            self._cheek(sh, g, side, s)
        self._nose(sh, g)
        mouth = self._mouth(sh, g, jaw)
        for side, s in (("Left", 1.0), ("Right", -1.0)):
            self._eye(sh, g, side, s)
            self._brow(sh, g, side, s)
        self._forehead(sh, g)
        self._chin(sh, g, jaw, mouth)
        return sh

    @staticmethod
    def _cheek(sh: _Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
        smile, csq, puff = g(f"mouthSmile{side}"), g(f"cheekSquint{side}"), g("cheekPuff")
        lift = 0.1 * csq + 0.06 * smile  # a squinting or smiling cheek rises towards the eye
        cx, cy = s * (0.55 + 0.03 * smile + 0.03 * puff), -0.37 + lift
        rx, ry = 0.15 * (1 + 0.45 * puff + 0.1 * csq), 0.09 * (1 + 0.4 * puff)
        sh.polygon(cx + rx * _C20[0], cy + ry * _C20[1], _BLUSH, 34 + 80 * csq + 55 * smile + 45 * puff)
        # the crease under the raised cheek apple
        sh.line(
            cx + 0.9 * rx * _APPLE_COS * s,
            cy - 0.012 + 1.25 * ry * _APPLE_SIN,
            _CREASE,
            220 * csq + 80 * smile,
            0.014,
        )
        hx, hr = s * (0.6 + 0.03 * puff), 1 + 0.5 * puff
        sh.polygon(hx + 0.08 * hr * _C16[0], -0.31 + 0.05 * hr * _C16[1], _SHINE, 90 * puff)
        # nasolabial fold: from the nose wing to beyond the mouth corner; smile and sneer deepen it
        sneer, upper_up = g(f"noseSneer{side}"), g(f"mouthUpperUp{side}")
        p0x, p0y = s * 0.19, -0.36 + 0.035 * sneer
        p1x, p1y = s * (0.31 + 0.05 * smile), -0.5 + 0.02 * smile
        p2x, p2y = s * (0.34 + 0.08 * smile), -0.72 + 0.05 * smile
        t = _T_BEZIER
        bx = (1 - t) ** 2 * p0x + 2 * (1 - t) * t * p1x + t**2 * p2x
        by = (1 - t) ** 2 * p0y + 2 * (1 - t) * t * p1y + t**2 * p2y
        sh.line(bx, by, _CREASE, 22 + 100 * smile + 70 * sneer + 50 * upper_up, 0.012 + 0.005 * smile)
        frown = g(f"mouthFrown{side}")  # marionette line under a pulled-down corner
        fx = s * (0.31 + np.array([0.0, 0.04, 0.06]))
        sh.line(fx, np.array([-0.84, -0.93, -1.02]), _CREASE, 190 * frown, 0.014)

    @staticmethod
    def _nose(sh: _Shapes, g: Callable[[str], np.ndarray]) -> None:
        # a soft shadow down the image-right flank (the light comes from the upper left) and a tip highlight
        flank_x = np.array([0.045, 0.06, 0.1, 0.06, 0.035, 0.03])
        flank_y = np.array([-0.02, -0.15, -0.3, -0.33, -0.16, -0.03])
        sh.polygon(flank_x, flank_y, _CREASE, 45, dz=np.array([0.05, 0.15, 0.2, 0.26, 0.2, 0.08]))
        sh.polygon(-0.025 + 0.035 * _C12[0], -0.3 + 0.028 * _C12[1], _SHINE, 110, dz=0.3)
        sh.line(
            np.array([-0.045, 0.0, 0.045]), np.array([-0.425, -0.44, -0.425]), _CREASE, 110, 0.011, dz=0.22
        )
        for side, s in (("Left", 1.0), ("Right", -1.0)):
            sneer = g(f"noseSneer{side}")
            wx, wy = s * (0.115 + 0.02 * sneer), -0.37 + 0.05 * sneer
            sh.line(
                wx + s * 0.055 * (1 + 0.2 * sneer) * _WING_COS,
                wy + 0.05 * _WING_SIN,
                _CREASE,
                120 + 90 * sneer,
                0.013,
                dz=0.12,
            )
            nx, ny = s * (0.06 + 0.01 * sneer), -0.415 + 0.045 * sneer
            sh.polygon(
                nx + 0.038 * _C12[0], ny + 0.017 * (1 + 0.6 * sneer) * _C12[1], (70, 36, 32), 200, dz=0.14
            )
            for k in range(3):  # wrinkles on the flank of a sneering nose
                ax, ay = s * 0.035, -0.04 - 0.055 * k
                sh.line(
                    np.array([ax, ax + s * 0.08]),
                    np.array([ay, ay - 0.035]),
                    _CREASE,
                    210 * sneer,
                    0.012,
                    dz=0.2,
                )

    @staticmethod
    def _eye(sh: _Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
        blink, squint, wide = g(f"eyeBlink{side}"), g(f"eyeSquint{side}"), g(f"eyeWide{side}")
        up, down = g(f"eyeLookUp{side}"), g(f"eyeLookDown{side}")
        look_in, look_out = g(f"eyeLookIn{side}"), g(f"eyeLookOut{side}")
        csq = g(f"cheekSquint{side}")
        t, bump = _T_EYE, _BUMP_EYE
        x = s * (0.2 + 0.37 * t)
        yc = 0.04 + 0.03 * t
        h_up = 0.085 * (1 + 0.65 * wide - 0.3 * squint + 0.15 * up - 0.2 * down)
        h_low = 0.055 * np.maximum(0.0, 1 + 0.35 * wide - 0.65 * squint - 0.45 * csq + 0.1 * down)
        top_open = yc + h_up * bump
        closed = yc - 0.35 * 0.055 * bump
        top = top_open + (closed - top_open) * blink
        bottom = np.minimum(yc - h_low * bump, top)
        ix = s * (0.385 + 0.1 * (look_out - look_in))
        iy = 0.06 + 0.06 * (up - down)
        sh.special(
            "eye",
            np.concatenate(
                [
                    np.broadcast_to(ix, iy.shape),
                    np.broadcast_to(x, top.shape),
                    np.broadcast_to(x[::-1][1:-1], top.shape[:1] + (9,)),
                ],
                1,
            ),
            np.concatenate([iy, top, bottom[:, ::-1][:, 1:-1]], 1),
            blink < 0.97,
            radius=0.071,
        )
        # lid crease above the eye, lower lid, the lid line with lashes, a bag line for squints
        sh.line(x[1:-1], (yc + (0.085 * (1 + 0.75 * wide) + 0.045) * bump)[..., 1:-1], _CREASE, 90, 0.011)
        sh.line(x[1:-1], bottom[:, 1:-1], _CREASE, 110, 0.01)
        sh.line(x, top, _LID, 255, 0.022 * (1 - 0.2 * blink))
        for k in (7, 9, 10):
            length = 0.6 + 0.2 * (k - 7)
            lx = np.concatenate(
                [np.full_like(top[:, :1], x[k]), np.full_like(top[:, :1], x[k] + s * 0.035 * length)], 1
            )
            ly = np.concatenate([top[:, k : k + 1], top[:, k : k + 1] + 0.04 * (1 - 2 * blink) * length], 1)
            sh.line(lx, ly, _LID, 255, 0.012)
        sh.line(x[2:-2], (yc - (h_low + 0.05) * bump)[:, 2:-2], _CREASE, 180 * np.maximum(squint, csq), 0.012)

    @staticmethod
    def _brow(sh: _Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
        down, inner, outer = g(f"browDown{side}"), g("browInnerUp"), g(f"browOuterUp{side}")
        t = _T_BROW
        x = s * (0.11 + 0.52 * t - 0.04 * down * (1 - t))
        y = 0.3 + 0.07 * np.sin(np.pi * t**1.4) - 0.025 * t
        y = y - 0.13 * down * (1.15 - 0.65 * t) + 0.13 * inner * (1 - t) ** 1.3 + 0.14 * outer * t**1.3
        half = 0.5 * (0.075 * (1 - t) + 0.032 * t + 0.012 * down * (1 - t))
        sh.polygon(
            np.concatenate([x, x[..., ::-1]], -1),
            np.concatenate([y + half, (y - half)[..., ::-1]], -1),
            _BROW,
        )
        # frown line between the brows; wrinkles above a raised outer brow
        sh.line(np.array([s * 0.045, s * 0.057]), np.array([0.17, 0.28]), _CREASE, 190 * down, 0.012)
        for k in range(2):
            ax = s * (0.33 + 0.29 * _T_ARC5)
            sh.line(ax, 0.52 + 0.07 * k + 0.02 * np.sin(np.pi * _T_ARC5), _CREASE, 150 * outer, 0.011)

    @staticmethod
    def _forehead(sh: _Shapes, g: Callable[[str], np.ndarray]) -> None:
        inner = g("browInnerUp")
        for k in range(3):
            xx = 0.26 * _T_ARC7
            sh.line(xx, 0.54 + 0.07 * k + 0.025 * np.cos(np.pi * _T_ARC7 / 2), _CREASE, 150 * inner, 0.011)

    @staticmethod
    def _chin(sh: _Shapes, g: Callable[[str], np.ndarray], jaw: np.ndarray, mouth: dict) -> None:
        shrug_lower, fwd = g("mouthShrugLower"), g("jawForward")
        cx, cy = jaw[:, :1], mouth["lower_lip_bottom"]
        xx = 0.11 * _T_ARC7
        sh.line(
            cx + xx,
            cy - 0.1 + 0.03 * _T_ARC7**2,
            _CREASE,
            55 + 120 * shrug_lower + 90 * fwd,
            0.013 + 0.006 * fwd,
        )
        for dx, dy in ((-0.05, -0.2), (0.04, -0.21), (-0.01, -0.26), (0.06, -0.27), (-0.07, -0.28)):
            # the chin boss wrinkles when the lower lip is pushed up
            sh.polygon(cx + dx + 0.014 * _C8[0], cy + dy + 0.011 * _C8[1], _CREASE, 200 * shrug_lower)
        sh.polygon(cx + 0.14 * _C16[0], jaw[:, 1:2] - 1.14 + 0.07 * _C16[1], _SHINE, 55 * fwd)

    @staticmethod
    def _mouth(sh: _Shapes, g: Callable[[str], np.ndarray], jaw: np.ndarray) -> dict:
        t = _T_MOUTH
        a = np.abs(t)
        left = t > 0
        wl = _smooth(t + 0.5)  # how much a ...Left coefficient acts at t (0.5 in the middle)

        def sided(name: str) -> np.ndarray:
            return wl * g(f"{name}Left") + (1 - wl) * g(f"{name}Right")

        def corner(name: str) -> np.ndarray:
            return np.where(left, g(f"{name}Left"), g(f"{name}Right"))

        pucker, funnel, puff, close = g("mouthPucker"), g("mouthFunnel"), g("cheekPuff"), g("mouthClose")
        roll_u, roll_l = g("mouthRollUpper"), g("mouthRollLower")
        shrug_u, shrug_l = g("mouthShrugUpper"), g("mouthShrugLower")
        tongue, jaw_open, fwd = g("tongueOut"), g("jawOpen"), g("jawForward")
        smile, frown, stretch = corner("mouthSmile"), corner("mouthFrown"), corner("mouthStretch")
        dimple, press = corner("mouthDimple"), corner("mouthPress")
        half_width = 0.29 * (
            1
            + 0.22 * smile
            + 0.32 * stretch
            + 0.12 * dimple
            + 0.06 * press
            - 0.45 * pucker
            - 0.32 * funnel
            - 0.12 * puff
            - 0.1 * jaw_open
        )
        mx = 0.16 * (g("mouthLeft") - g("mouthRight")) + 0.55 * jaw[:, :1]
        x = mx + t * half_width
        corner_dy = 0.12 * smile - 0.1 * frown - 0.035 * stretch + 0.03 * dimple + 0.35 * jaw[:, 1:2]
        prof = (1 - a**2) ** 0.7  # 1 in the middle, 0 at the corners
        round_prof = np.sqrt(np.maximum(1 - a**2, 0.0))
        seam = -0.76 + a**1.8 * corner_dy + prof * (0.03 * shrug_u + 0.035 * shrug_l + 0.025 * close)
        drop = -jaw[:, 1:2] * (1 - 0.95 * close)  # how far the jaw pulls the lower lip down
        gap_u = prof * (0.07 * sided("mouthUpperUp") + 0.012 * tongue + 0.012 * sided("mouthStretch"))
        gap_u = gap_u + round_prof * (0.035 * funnel + 0.12 * drop)
        gap_l = prof * (0.08 * sided("mouthLowerDown") + 0.035 * tongue + 0.015 * sided("mouthStretch"))
        gap_l = gap_l + round_prof * (0.05 * funnel + 0.75 * drop)
        thick = 0.55 * pucker + 0.45 * funnel + 0.15 * close
        thin = 0.55 * sided("mouthPress") + 0.15 * sided("mouthSmile") + 0.2 * sided("mouthStretch")
        bow = (1 - a**2.2) ** 0.6 * (1 - 0.22 * np.exp(-((t / 0.12) ** 2)))
        th_u = 0.06 * bow * np.maximum(1 - 0.85 * roll_u - thin + thick + 0.3 * shrug_u, 0.08)
        th_l = (
            0.08
            * (1 - a**2) ** 0.6
            * np.maximum(1 - 0.85 * roll_l - thin + thick + 0.35 * fwd + 0.3 * shrug_l, 0.08)
        )
        ui, li = seam + gap_u, seam - gap_l
        uo, lo = ui + th_u, li - th_l
        lip_dz = 0.05 + 0.12 * pucker + 0.08 * funnel
        xb = np.broadcast_to(x, ui.shape)
        n_mid = int(_TEETH_SPAN.sum())
        sh.special(
            "mouth",
            np.concatenate([xb, xb[:, ::-1][:, 1:-1], xb[:, _TEETH_SPAN], xb[:, _TEETH_SPAN]], 1),
            np.concatenate([ui, li[:, ::-1][:, 1:-1], ui[:, _TEETH_SPAN], li[:, _TEETH_SPAN]], 1),
            (ui - li).max(1, keepdims=True) > 0.004,
            dz=lip_dz,
            n_opening=2 * len(t) - 2,
            n_teeth=n_mid,
            tooth=0.065,
        )
        sh.polygon(
            np.concatenate([xb, xb[:, ::-1]], 1), np.concatenate([uo, ui[:, ::-1]], 1), _LIP_UPPER, dz=lip_dz
        )
        sh.polygon(
            np.concatenate([xb, xb[:, ::-1]], 1), np.concatenate([li, lo[:, ::-1]], 1), _LIP_LOWER, dz=lip_dz
        )
        pressed = 0.5 * (g("mouthPressLeft") + g("mouthPressRight"))
        sh.line(xb, 0.5 * (ui + li), _LIP_LINE, 255, 0.01 + 0.008 * pressed, dz=lip_dz)
        for k, sgn, side in ((0, -1.0, "Right"), (len(t) - 1, 1.0, "Left")):
            # a small hook at each corner points the way the corner moves; a dimple is a short arc beside it
            cx0, cy0 = x[:, k : k + 1], seam[:, k : k + 1]
            hook_y = 0.3 * (corner_dy[:, k : k + 1] - 0.35 * jaw[:, 1:2]) + 0.006
            sh.line(
                np.concatenate([cx0 - sgn * 0.01, cx0 + sgn * 0.03], 1),
                np.concatenate([cy0, cy0 + hook_y], 1),
                _CREASE,
                140,
                0.011,
                dz=lip_dz,
            )
            ax = cx0 + sgn * np.array([0.06, 0.075, 0.06])
            sh.line(ax, cy0 + np.array([0.055, 0.0, -0.055]), _CREASE, 255 * g(f"mouthDimple{side}"), 0.017)
        wrinkle = 170 * np.minimum(1.0, pucker + funnel)  # vertical wrinkles of pushed-out lips
        for k in (6, 8, 12, 14):
            xk = xb[:, k : k + 1]
            sh.line(
                np.concatenate([xk, xk], 1),
                np.concatenate([uo[:, k : k + 1] - 0.01, ui[:, k : k + 1] + 0.006], 1),
                _LIP_LINE,
                wrinkle,
                0.007,
                dz=lip_dz,
            )
            sh.line(
                np.concatenate([xk, xk], 1),
                np.concatenate([li[:, k : k + 1] - 0.006, lo[:, k : k + 1] + 0.012], 1),
                _LIP_LINE,
                wrinkle,
                0.007,
                dz=lip_dz,
            )
        # the tongue sticks out over the lower lip
        top = li[:, _MID_MOUTH : _MID_MOUTH + 1] + 0.02
        tip = li[:, _MID_MOUTH : _MID_MOUTH + 1] - 0.05 - 0.15 * tongue
        half = 0.1 + 0.03 * tongue
        tx = _T_ARC7 * 0.999
        body_y = top - (top - tip) * np.sqrt(1 - tx**2) ** 0.7
        sh.polygon(
            np.concatenate([mx - half, mx + half * tx, mx + half], 1),
            np.concatenate([top, body_y, top], 1),
            _TONGUE,
            255 * (tongue > 0),
            dz=lip_dz + 0.06 * tongue,
        )
        sh.line(
            np.concatenate([mx, mx], 1),
            np.concatenate([top - 0.025, tip + 0.04 * tongue], 1),
            (170, 70, 82),
            200 * (tongue > 0.1),
            0.008,
            dz=lip_dz + 0.06,
        )
        return {"lower_lip_bottom": lo[:, _MID_MOUTH : _MID_MOUTH + 1]}

    # -- drawing one frame --------------------------------------------------------------------------------
    def _draw(self, canvas: Image.Image, shapes: _Shapes, f: int, flat: list[float], unit: float) -> None:
        draw = ImageDraw.Draw(canvas, "RGBA")
        for item in shapes.items:
            alpha = item.alpha[f]
            if alpha == 0:
                continue
            pts = flat[2 * item.sl.start : 2 * item.sl.stop]
            if item.kind == "polygon":
                draw.polygon(pts, fill=(*item.colour, alpha))
            elif item.kind == "line":
                draw.line(pts, fill=(*item.colour, alpha), width=item.width[f], joint="curve")
            elif item.kind == "eye":
                self._paste_eye(canvas, np.asarray(pts).reshape(-1, 2), item.extra["radius"] * unit)
            else:
                self._paste_mouth(canvas, np.asarray(pts).reshape(-1, 2), item.extra, unit)

    @staticmethod
    def _masked(
        canvas: Image.Image, opening: np.ndarray, fill: tuple
    ) -> tuple[Image.Image, Image.Image, np.ndarray]:
        """A small image over ``opening``'s bounding box, its polygon mask and its origin ``[2]``."""
        origin = np.floor(opening.min(0)) - 1
        size = (np.ceil(opening.max(0)) + 2 - origin).astype(int)
        mask = Image.new("L", (int(size[0]), int(size[1])), 0)
        ImageDraw.Draw(mask).polygon((opening - origin).ravel().tolist(), fill=255)
        return Image.new("RGB", mask.size, fill), mask, origin

    def _paste_eye(self, canvas: Image.Image, pts: np.ndarray, radius: float) -> None:
        iris, opening = pts[0], pts[1:]
        content, mask, origin = self._masked(canvas, opening, _EYE_WHITE)
        d = ImageDraw.Draw(content)
        cx, cy = iris - origin
        d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=_IRIS)
        pr, hr = 0.45 * radius, 0.22 * radius
        d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=_PUPIL)
        hx, hy = cx - 0.35 * radius, cy - 0.4 * radius
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255))
        upper = opening[:11] - origin  # the upper lid casts a soft shadow on the eyeball
        d.polygon(
            np.concatenate([upper, upper[::-1] + [0.0, max(2.0, 0.3 * radius)]]).ravel().tolist(),
            fill=_EYE_SHADOW,
        )
        canvas.paste(content, (int(origin[0]), int(origin[1])), mask)

    def _paste_mouth(self, canvas: Image.Image, pts: np.ndarray, extra: dict, unit: float) -> None:
        n, k = extra["n_opening"], extra["n_teeth"]
        opening, upper, lower = pts[:n], pts[n : n + k], pts[n + k : n + 2 * k]
        content, mask, origin = self._masked(canvas, opening, _MOUTH_INSIDE)
        d = ImageDraw.Draw(content)
        upper, lower = upper - origin, lower - origin
        h = extra["tooth"] * unit
        width = float(lower[-1, 0] - lower[0, 0])
        cx, bottom = float(lower[:, 0].mean()), float(lower[:, 1].max())
        d.ellipse(
            [cx - 0.32 * width, bottom - 0.1 * unit, cx + 0.32 * width, bottom + 0.06 * unit], fill=_TONGUE
        )
        d.polygon(np.concatenate([upper, upper[::-1] + [0.0, h]]).ravel().tolist(), fill=_TEETH)
        d.polygon(np.concatenate([lower, lower[::-1] - [0.0, 0.75 * h]]).ravel().tolist(), fill=_TEETH)
        canvas.paste(content, (int(origin[0]), int(origin[1])), mask)


# --- the renderer seam --------------------------------------------------------------------------------
RendererFactory = Callable[..., FaceRenderer]
_RENDERERS: dict[str, RendererFactory] = {"cartoon": CartoonRenderer}


def register_renderer(name: str, factory: RendererFactory, *, replace: bool = False) -> None:
    """Make ``build_renderer(name, **kwargs)`` call ``factory(**kwargs)``; it must accept ``size=``."""
    if name in _RENDERERS and not replace:
        raise ValueError(f"renderer {name!r} is already registered; pass replace=True to override it")
    _RENDERERS[name] = factory


def available_renderers() -> list[str]:
    return sorted(_RENDERERS)


def build_renderer(name: str = "cartoon", **kwargs: object) -> FaceRenderer:
    """The renderer the ``render`` stage uses, by name (``params.yaml``), e.g. ``build_renderer(size=256)``.

    Only ``"cartoon"`` (:class:`CartoonRenderer`, no weights) ships. A neural renderer plugs in without any
    change to the stage: write a class with a ``size`` attribute and ``render(coeffs [frames, 58]) -> uint8
    [frames, size, size, 3]`` and register it, e.g. for PIRender::

        register_renderer("pirender", lambda size=256, **kw: PIRenderAdapter(size=size, **kw))

    where the adapter loads the user's licensed PIRender generator and FaceVerse checkpoints, keeps a
    reference portrait of the identity to animate, turns each frame's 58 FaceVerse coefficients into the
    motion descriptor PIRender was trained on (the REACT baselines feed a window of 27 frames of
    expression and pose coefficients centred on the frame) and returns the generated frames as uint8 RGB.
    The adapter must be deterministic for the stage to be reproducible (fixed seeds, eval mode).
    """
    if name not in _RENDERERS:
        raise ValueError(
            f"unknown renderer {name!r}; available: {available_renderers()} (see register_renderer)"
        )
    renderer = _RENDERERS[name](**kwargs)
    if not isinstance(renderer, FaceRenderer):
        raise TypeError(f"renderer {name!r} does not implement FaceRenderer (size, render)")
    return renderer


# --- composing the grid ----------------------------------------------------------------------------------
_GAP_COLOUR = (34, 36, 42)
_SPEAKER_RING = (92, 140, 220)
_REAL_RING = (96, 186, 104)


@dataclass(frozen=True)
class GridLayout:
    """Where the speaker panel and the listener tiles go in a composed frame (pixels, x right, y down)."""

    tile: int
    rows: int
    cols: int
    gap: int
    panel: int  # the speaker panel's side, the height of the tile grid
    width: int
    height: int
    tiles: tuple[tuple[int, int], ...]  # top-left (x, y) of each listener tile, row-major


def grid_layout(n_tiles: int, tile: int) -> GridLayout:
    """Speaker panel on the left as tall as the grid of ``n_tiles`` square tiles of side ``tile`` beside it.

    The grid has ``rows = ceil(sqrt(n / 2))`` rows, so that it is about twice as wide as tall (1 + 10 tiles:
    3 x 4). Width and height are even (H.264 with 4:2:0 chroma needs that).
    """
    gap = max(2, tile // 48)
    if n_tiles <= 0:
        panel = tile
        rows = cols = 0
        tiles: tuple[tuple[int, int], ...] = ()
        width = panel + 2 * gap
    else:
        rows = max(1, math.ceil(math.sqrt(n_tiles / 2)))
        cols = math.ceil(n_tiles / rows)
        panel = rows * tile + (rows - 1) * gap
        x0 = gap + panel + 2 * gap
        tiles = tuple(
            (x0 + (k % cols) * (tile + gap), gap + (k // cols) * (tile + gap)) for k in range(n_tiles)
        )
        width = x0 + cols * tile + (cols - 1) * gap + gap
    height = panel + 2 * gap
    return GridLayout(tile, rows, cols, gap, panel, width + width % 2, height + height % 2, tiles)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label_overlays(
    layout: GridLayout, labels: Sequence[str]
) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """Pre-rendered labels: ``(x, y, rgb [h, w, 3], alpha [h, w, 1])`` patches for the panel and the tiles."""
    size = max(9, layout.tile // 11)
    font = _font(size)
    origins = [(layout.gap, layout.gap)] + list(layout.tiles)
    out = []
    for (x, y), text in zip(origins, labels, strict=True):
        left, top, right, bottom = font.getbbox(text)
        w, h = int(right - left) + 6, int(bottom - top) + 4
        w = min(w, layout.width - x)
        patch = Image.new("RGBA", (w, h), (0, 0, 0, 140))
        ImageDraw.Draw(patch).text((3 - left, 2 - top), text, fill=(255, 255, 255, 255), font=font)
        arr = np.asarray(patch).astype(np.float32)
        out.append((x + 2, y + 2, arr[..., :3], arr[..., 3:] / 255.0))
    return out


def compose_grid(
    speaker: np.ndarray,
    listener_real: np.ndarray | None,
    generated: np.ndarray,
    labels: bool = True,
) -> np.ndarray:
    """The speaker (large, left) beside the real listener and the M generated listeners in a grid.

    ``speaker`` ``uint8 [T, S, S, 3]``, ``listener_real`` ``[T, t, t, 3]`` or None, ``generated``
    ``[M, T, t, t, 3]`` -> ``uint8 [T, H, W, 3]`` laid out by :func:`grid_layout` (the real listener first,
    framed in green; the speaker framed in blue). The speaker is resized (bilinear) when ``S`` is not the
    layout's panel size; render it at ``grid_layout(...).panel`` to avoid that. ``H`` and ``W`` are even.
    """
    speaker = np.asarray(speaker)
    generated = np.asarray(generated)
    if generated.ndim != 5:
        raise ValueError(f"generated must be [M, T, H, W, 3], got shape {generated.shape}")
    tiles = ([] if listener_real is None else [np.asarray(listener_real)]) + list(generated)
    frames = speaker.shape[0]
    for k, t in enumerate(tiles):
        if t.shape[0] != frames:
            raise ValueError(f"listener stream {k} has {t.shape[0]} frames, the speaker {frames}")
        if t.shape[1:] != tiles[0].shape[1:] or t.shape[1] != t.shape[2]:
            raise ValueError(
                f"listener tiles must share one square size, got {t.shape[1:]} and {tiles[0].shape[1:]}"
            )
    tile = tiles[0].shape[1] if tiles else speaker.shape[1]
    layout = grid_layout(len(tiles), tile)
    out = np.empty((frames, layout.height, layout.width, 3), np.uint8)
    out[:] = _GAP_COLOUR
    g, p = layout.gap, layout.panel
    out[:, : p + 2 * g, : p + 2 * g] = _SPEAKER_RING
    if speaker.shape[1:3] != (p, p):
        speaker = np.stack(
            [np.asarray(Image.fromarray(f).resize((p, p), Image.Resampling.BILINEAR)) for f in speaker]
        )
    out[:, g : g + p, g : g + p] = speaker
    for k, ((x, y), frames_k) in enumerate(zip(layout.tiles, tiles, strict=True)):
        if k == 0 and listener_real is not None:
            out[:, y - g : y + tile + g, x - g : x + tile + g] = _REAL_RING
        out[:, y : y + tile, x : x + tile] = frames_k
    if labels:
        names = ["speaker"] + (["listener (real)"] if listener_real is not None else [])
        names += [f"generated {m + 1}" for m in range(len(generated))]
        for x, y, rgb, alpha in _label_overlays(layout, names):
            region = out[:, y : y + rgb.shape[0], x : x + rgb.shape[1]].astype(np.float32)
            h, w = region.shape[1:3]  # a label can run off the frame's edge
            out[:, y : y + h, x : x + w] = region + alpha[:h, :w] * (rgb[:h, :w] - region) + 0.5
    return out


# --- video --------------------------------------------------------------------------------------------------
def _ffmpeg() -> str:
    try:
        import imageio_ffmpeg
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise RuntimeError(
            "writing videos needs the imageio-ffmpeg package (it ships an ffmpeg binary)"
        ) from err
    return imageio_ffmpeg.get_ffmpeg_exe()


def _chunks(frames: np.ndarray | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(frames, np.ndarray):
        frames = [frames]
    for chunk in frames:
        chunk = np.asarray(chunk)
        yield chunk[None] if chunk.ndim == 3 else chunk


def _run_ffmpeg(args: list[str], stdin_chunks: Iterator[np.ndarray] | None = None) -> int:
    """Run ffmpeg, feeding it raw frames; returns how many frames were fed. Raises with ffmpeg's message."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin_chunks else None, stderr=err)
        fed = 0
        try:
            if stdin_chunks is not None:
                for chunk in stdin_chunks:
                    proc.stdin.write(np.ascontiguousarray(chunk, np.uint8).tobytes())
                    fed += len(chunk)
                proc.stdin.close()
        except BrokenPipeError:
            pass
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        rc = proc.wait()
        if rc != 0:
            err.seek(0)
            raise RuntimeError(f"ffmpeg failed ({rc}): {err.read().decode(errors='replace')[-2000:]}")
    return fed


def _prepare_audio(audio: np.ndarray, samples: int) -> np.ndarray:
    """``float [-1, 1]`` or ``int16`` ``[n]`` / ``[n, channels]`` -> float32 ``[samples, channels]``, trimmed
    or zero-padded to the video's duration so that picture and sound end together."""
    a = np.asarray(audio)
    a = a.astype(np.float32) / 32768.0 if a.dtype == np.int16 else a.astype(np.float32)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"audio must be [samples] or [samples, channels], got shape {a.shape}")
    if len(a) >= samples:
        return np.ascontiguousarray(a[:samples])
    return np.concatenate([a, np.zeros((samples - len(a), a.shape[1]), np.float32)])


def write_video(
    path: Path,
    frames: np.ndarray | Iterable[np.ndarray],
    fps: int = FPS,
    audio: np.ndarray | None = None,
    audio_rate: int = MODEL_SAMPLE_RATE,
    crf: int = 20,
    preset: str = "veryfast",
    threads: int | None = None,
) -> None:
    """Write RGB frames as an H.264 MP4 (yuv420p, odd sizes padded to even) with an optional AAC audio track.

    ``frames``: ``uint8 [T, H, W, 3]``, or an iterable of ``[H, W, 3]`` frames / ``[t, H, W, 3]`` chunks so
    that long videos stream without being held in memory. ``audio``: ``float [-1, 1]`` or ``int16``,
    ``[samples]`` or ``[samples, channels]`` at ``audio_rate``; it is trimmed or zero-padded to
    ``T / fps`` seconds. ``threads`` caps the encoder's threads (default: ffmpeg's choice). The file
    appears atomically (written beside ``path``, then renamed).
    """
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = _chunks(frames)
    first = next(chunks, None)
    if first is None or len(first) == 0:
        raise ValueError(f"no frames to write to {path}")
    if first.ndim != 4 or first.shape[-1] != 3:
        raise ValueError(f"frames must be RGB [T, H, W, 3], got a chunk of shape {first.shape}")
    height, width = first.shape[1:3]

    def checked() -> Iterator[np.ndarray]:
        for chunk in [first] if first is not None else []:
            yield chunk
        for chunk in chunks:
            if chunk.shape[1:] != first.shape[1:]:
                raise ValueError(f"frame size changed from {first.shape[1:]} to {chunk.shape[1:]} in {path}")
            yield chunk

    ffmpeg = _ffmpeg()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        video = os.path.join(tmp, "video.mp4")
        n = _run_ffmpeg(
            [
                ffmpeg,
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "rgb24",
                "-s",
                f"{width}x{height}",
                "-r",
                str(fps),
                "-i",
                "-",
                "-an",
                "-vf",
                "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                "-c:v",
                "libx264",
                "-preset",
                preset,
                "-crf",
                str(crf),
                *(["-threads", str(threads)] if threads else []),
                "-pix_fmt",
                "yuv420p",
                "-movflags",
                "+faststart",
                video,
            ],
            checked(),
        )
        result = video
        if audio is not None:
            wav = os.path.join(tmp, "audio.wav")
            soundfile.write(
                wav, _prepare_audio(audio, round(n / fps * audio_rate)), audio_rate, subtype="PCM_16"
            )
            result = os.path.join(tmp, "muxed.mp4")
            _run_ffmpeg(
                [
                    ffmpeg,
                    "-hide_banner",
                    "-loglevel",
                    "error",
                    "-y",
                    "-i",
                    video,
                    "-i",
                    wav,
                    "-map",
                    "0:v:0",
                    "-map",
                    "1:a:0",
                    "-c:v",
                    "copy",
                    "-c:a",
                    "aac",
                    "-b:a",
                    "128k",
                    "-movflags",
                    "+faststart",
                    result,
                ]
            )
        os.replace(result, path)


def probe_video(path: Path) -> dict:
    """Facts about a video file, read by ffmpeg (the frame count by demuxing every packet).

    Returns ``{"frames", "width", "height", "fps", "codec", "pix_fmt", "duration_s", "has_audio",
    "audio_codec", "audio_rate"}`` (audio entries None without an audio stream).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    proc = subprocess.run(
        [
            _ffmpeg(),
            "-hide_banner",
            "-nostats",
            "-progress",
            "pipe:1",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    info = proc.stderr
    video = re.search(
        r"Stream #\S+.*?: Video: (\w+)[^,]*, (\w+)[^\n]*?, (\d+)x(\d+)[^\n]*?, ([\d.]+) fps", info
    )
    if proc.returncode != 0 or video is None:
        raise RuntimeError(f"ffmpeg could not read a video stream from {path}: {info[-1000:]}")
    frames = re.findall(r"^frame=(\d+)", proc.stdout, re.M)
    audio = re.search(r"Stream #\S+.*?: Audio: (\w+)[^,\n]*, (\d+) Hz", info)
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", info)
    return {
        "frames": int(frames[-1]) if frames else 0,
        "width": int(video.group(3)),
        "height": int(video.group(4)),
        "fps": float(video.group(5)),
        "codec": video.group(1),
        "pix_fmt": video.group(2),
        "duration_s": (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3)))
        if duration
        else None,
        "has_audio": audio is not None,
        "audio_codec": audio.group(1) if audio else None,
        "audio_rate": int(audio.group(2)) if audio else None,
    }


def write_reaction_video(
    path: Path,
    speaker: np.ndarray,
    listener_real: np.ndarray | None,
    generated: np.ndarray,
    audio: np.ndarray | None = None,
    audio_rate: int = MODEL_SAMPLE_RATE,
    renderer: str = "cartoon",
    tile: int = 128,
    fps: int = FPS,
    chunk: int = 50,
    labels: bool = True,
    encoder_threads: int | None = None,
    **renderer_kwargs: object,
) -> GridLayout:
    """Render and write one session's video: the speaker beside the real and the M generated listeners.

    ``speaker`` ``float [T, 58]``, ``listener_real`` ``[T, 58]`` or None, ``generated`` ``[M, T, 58]``
    FaceVerse coefficients at ``fps``; ``audio`` is the speaker's voice (see :func:`write_video`). Listeners
    are rendered at ``tile`` pixels and the speaker at the layout's panel size by ``build_renderer(renderer,
    size=..., **renderer_kwargs)``; frames are rendered, composed and encoded ``chunk`` at a time, so memory
    stays flat for 30 s sessions; ``encoder_threads`` goes to :func:`write_video`. Returns the layout used.
    """
    speaker = np.asarray(speaker, np.float64)
    generated = np.asarray(generated, np.float64)
    if generated.ndim == 2:
        generated = generated[None]
    frames = len(speaker)
    if generated.shape[1] != frames or (listener_real is not None and len(listener_real) != frames):
        raise ValueError(
            f"speaker has {frames} frames, generated {generated.shape[1]}, "
            f"real listener {None if listener_real is None else len(listener_real)}: they must be in sync"
        )
    n_tiles = len(generated) + (listener_real is not None)
    layout = grid_layout(n_tiles, tile)
    speaker_renderer = build_renderer(renderer, size=layout.panel, **renderer_kwargs)
    tile_renderer = build_renderer(renderer, size=tile, **renderer_kwargs)

    def stream() -> Iterator[np.ndarray]:
        for s in range(0, frames, chunk):
            sl = slice(s, min(s + chunk, frames))
            real = None if listener_real is None else tile_renderer.render(np.asarray(listener_real)[sl])
            gen = (
                np.stack([tile_renderer.render(g[sl]) for g in generated])
                if len(generated)
                else np.zeros((0, sl.stop - s, tile, tile, 3), np.uint8)
            )
            yield compose_grid(speaker_renderer.render(speaker[sl]), real, gen, labels=labels)

    write_video(path, stream(), fps=fps, audio=audio, audio_rate=audio_rate, threads=encoder_threads)
    return layout


# --- plots ------------------------------------------------------------------------------------------------
def _save_figure(fig: object, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=100)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def plot_coefficients(
    path: Path,
    speaker: np.ndarray,
    listener_real: np.ndarray | None,
    generated: np.ndarray,
    dims: Sequence[int | str] = PAPER_PLOT_DIMS,
    fps: int = FPS,
    title: str | None = None,
) -> None:
    """PNG of chosen coefficients over time, one panel per dim: the speaker, the real listener and the M
    generated listeners overlaid (thin, translucent) with their mean.

    ``speaker`` ``[T, 58]``, ``listener_real`` ``[T, 58]`` or None, ``generated`` ``[M, T, 58]``; ``dims``
    are indices or names (ARKit expression names, ``pitch``/``yaw``/``roll``/``tx``/``ty``/``tz``).
    """
    from matplotlib.figure import Figure

    idx = [coefficient_index(d) for d in dims]
    if not idx:
        raise ValueError("plot_coefficients needs at least one dim")
    speaker = np.asarray(speaker)
    generated = np.asarray(generated)
    if generated.ndim == 2:
        generated = generated[None]
    t = np.arange(len(speaker)) / fps
    fig = Figure(figsize=(10, 1.7 * len(idx) + 0.8), layout="constrained")
    axes = fig.subplots(len(idx), 1, sharex=True, squeeze=False)[:, 0]
    for ax, d in zip(axes, idx, strict=True):
        for m, g in enumerate(generated):
            ax.plot(
                t[: len(g)],
                g[:, d],
                color="tab:orange",
                lw=0.7,
                alpha=0.35,
                label="generated" if m == 0 else None,
            )
        if len(generated) > 1:
            ax.plot(
                t[: generated.shape[1]],
                generated[:, :, d].mean(0),
                color="tab:red",
                lw=1.2,
                label="generated mean",
            )
        ax.plot(t, speaker[:, d], color="tab:blue", lw=1.2, label="speaker")
        if listener_real is not None:
            ax.plot(
                t[: len(listener_real)],
                np.asarray(listener_real)[:, d],
                color="black",
                lw=1.2,
                label="listener (real)",
            )
        ax.set_ylabel(coefficient_name(d), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncol=4)
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def plot_metric_bars(
    path: Path,
    table: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    lower_is_better: Iterable[str] = (),
    title: str | None = None,
) -> None:
    """PNG of bar charts, one panel per metric, one bar per variant: ``table[variant][metric] -> value``.

    Missing or non-finite values are marked ``n/a``; panels of metrics in ``lower_is_better`` say so.
    """
    from matplotlib.figure import Figure

    if not metrics or not table:
        raise ValueError("plot_metric_bars needs at least one metric and one variant")
    lower = set(lower_is_better)
    variants = list(table)
    cols = min(len(metrics), 4)
    rows = math.ceil(len(metrics) / cols)
    fig = Figure(figsize=(3.2 * cols + 0.5, 2.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colours = [f"C{k % 10}" for k in range(len(variants))]
    for ax, metric in zip(axes, metrics, strict=False):
        values = [float(table[v].get(metric, np.nan)) for v in variants]
        finite = [v if np.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(variants)), finite, color=colours)
        for bar, v in zip(bars, values, strict=True):
            label = f"{v:.3g}" if np.isfinite(v) else "n/a"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
                xytext=(0, 1),
                textcoords="offset points",
            )
        ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=8)
        ax.set_title(metric + (" (lower is better)" if metric in lower else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)


def plot_denoising_curve(path: Path, curve: Sequence[Mapping[str, float]], title: str | None = None) -> None:
    """PNG of a denoising curve (:func:`reactdiff.denoising.denoising_curve`): mean squared error against
    the noise level, log-log, one line per estimate (noisy input, linear denoiser, model), and the model's
    error relative to the linear denoiser's below it.
    """
    from matplotlib.figure import Figure

    if not curve:
        raise ValueError("plot_denoising_curve needs at least one noise level")
    sigma = np.array([row["sigma"] for row in curve])
    fig = Figure(figsize=(7, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    styles = {"noisy": ("noisy input", "0.6", "--"), "linear": ("linear (Wiener) denoiser", "tab:blue", "-")}
    styles["model"] = ("model", "tab:red", "-")
    for key, (label, colour, line) in styles.items():
        top.loglog(sigma, [row[key] for row in curve], line, color=colour, marker="o", ms=4, label=label)
    top.set_ylabel("mean squared error")
    top.legend(fontsize=8)
    top.grid(alpha=0.3, which="both")
    ratio = np.array([row["model"] / row["linear"] for row in curve])
    bottom.semilogx(sigma, ratio, color="tab:red", marker="o", ms=4)
    bottom.axhline(1.0, color="tab:blue", lw=1)
    bottom.set_ylabel("model / linear")
    bottom.set_xlabel("noise level sigma")
    bottom.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    _save_figure(fig, path)
