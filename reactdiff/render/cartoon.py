""":class:`CartoonRenderer`: a parametric cartoon head, no weights. The head (cranium and jaw), ears, neck
and shoulders are ray-cast ellipsoids with Lambert shading and a hairline; the face is drawn over them as
antialiased vector shapes (:mod:`reactdiff.render.face_parts`). Each of the 52 ARKit blendshapes drives a
visible part of the face; head rotation and translation turn and move the head.

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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from reactdiff.layout import N_COEFFS, N_EXPRESSION
from reactdiff.reference import coefficient_stats
from reactdiff.render import face_parts
from reactdiff.render.face_parts import (
    EYE_SHADOW,
    EYE_WHITE,
    IRIS,
    MOUTH_INSIDE,
    PUPIL,
    SUPERSAMPLE,
    TEETH,
    TONGUE,
    Shapes,
)
from reactdiff.render.faces import (
    EXPRESSION_INDEX,
    FACEVERSE_CAMERA_Z,
    FACEVERSE_FOCAL_PX,
    FACEVERSE_IMAGE_PX,
    MAX_ROTATION,
    MAX_SHIFT,
    ROTATION_SIGNS,
    TZ_DIM,
    ZOOM_RANGE,
)

# --- cartoon geometry: head units (half the head width); head frame x = image right, y up, z to camera ---
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
        j = {
            n: e[:, EXPRESSION_INDEX[n]]
            for n in ("jawLeft", "jawRight", "jawOpen", "jawForward", "cheekPuff")
        }
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
    def _face_shapes(self, e: np.ndarray, jaw: np.ndarray) -> Shapes:
        sh = Shapes(len(e))

        def g(name: str) -> np.ndarray:
            return e[:, EXPRESSION_INDEX[name], None]  # [T, 1]

        for side, s in (("Left", 1.0), ("Right", -1.0)):
            face_parts.cheek(sh, g, side, s)
        face_parts.nose(sh, g)
        mouth = face_parts.mouth(sh, g, jaw)
        for side, s in (("Left", 1.0), ("Right", -1.0)):
            face_parts.eye(sh, g, side, s)
            face_parts.brow(sh, g, side, s)
        face_parts.forehead(sh, g)
        face_parts.chin(sh, g, jaw, mouth)
        return sh

    def _draw(self, canvas: Image.Image, shapes: Shapes, f: int, flat: list[float], unit: float) -> None:
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
        content, mask, origin = self._masked(canvas, opening, EYE_WHITE)
        d = ImageDraw.Draw(content)
        cx, cy = iris - origin
        d.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=IRIS)
        pr, hr = 0.45 * radius, 0.22 * radius
        d.ellipse([cx - pr, cy - pr, cx + pr, cy + pr], fill=PUPIL)
        hx, hy = cx - 0.35 * radius, cy - 0.4 * radius
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=(255, 255, 255))
        upper = opening[:11] - origin  # the upper lid casts a soft shadow on the eyeball
        d.polygon(
            np.concatenate([upper, upper[::-1] + [0.0, max(2.0, 0.3 * radius)]]).ravel().tolist(),
            fill=EYE_SHADOW,
        )
        canvas.paste(content, (int(origin[0]), int(origin[1])), mask)

    def _paste_mouth(self, canvas: Image.Image, pts: np.ndarray, extra: dict, unit: float) -> None:
        n, k = extra["n_opening"], extra["n_teeth"]
        opening, upper, lower = pts[:n], pts[n : n + k], pts[n + k : n + 2 * k]
        content, mask, origin = self._masked(canvas, opening, MOUTH_INSIDE)
        d = ImageDraw.Draw(content)
        upper, lower = upper - origin, lower - origin
        h = extra["tooth"] * unit
        width = float(lower[-1, 0] - lower[0, 0])
        cx, bottom = float(lower[:, 0].mean()), float(lower[:, 1].max())
        d.ellipse(
            [cx - 0.32 * width, bottom - 0.1 * unit, cx + 0.32 * width, bottom + 0.06 * unit], fill=TONGUE
        )
        d.polygon(np.concatenate([upper, upper[::-1] + [0.0, h]]).ravel().tolist(), fill=TEETH)
        d.polygon(np.concatenate([lower, lower[::-1] - [0.0, 0.75 * h]]).ravel().tolist(), fill=TEETH)
        canvas.paste(content, (int(origin[0]), int(origin[1])), mask)
