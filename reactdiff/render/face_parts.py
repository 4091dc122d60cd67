"""The cartoon's face as antialiased vector shapes: cheeks, nose, mouth, eyes, brows, forehead and chin,
each a function of the 52 blendshape weights (drawn by :class:`reactdiff.render.cartoon.CartoonRenderer`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# --- the face's vector shapes ---
SUPERSAMPLE = 2  # the face's vector shapes are drawn at this multiple of the output size, then box-filtered
_BROW = (72, 50, 38)
_LID = (58, 38, 34)
EYE_WHITE = (250, 249, 247)
EYE_SHADOW = (206, 196, 194)
IRIS = (86, 118, 150)
PUPIL = (22, 22, 28)
_LIP_UPPER = (186, 88, 92)
_LIP_LOWER = (204, 108, 110)
_LIP_LINE = (104, 40, 46)
MOUTH_INSIDE = (88, 28, 36)
TEETH = (246, 244, 236)
TONGUE = (226, 110, 140)
_CREASE = (150, 92, 72)  # folds and wrinkles, drawn with an alpha that the expression sets
_BLUSH = (232, 118, 118)
_SHINE = (255, 244, 236)

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


@dataclass
class _Item:
    kind: str  # polygon | line | eye | mouth
    sl: slice  # its points in the batch's point arrays
    colour: tuple[int, int, int]
    alpha: list[int]  # per frame; 0 skips the item
    width: list[int] = field(default_factory=list)  # per frame, supersampled pixels (lines)
    extra: dict = field(default_factory=dict)


_Arr = float | np.ndarray  # a scalar or anything that broadcasts to [T, n]


class Shapes:
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


def cheek(sh: Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
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


def nose(sh: Shapes, g: Callable[[str], np.ndarray]) -> None:
    # a soft shadow down the image-right flank (the light comes from the upper left) and a tip highlight
    flank_x = np.array([0.045, 0.06, 0.1, 0.06, 0.035, 0.03])
    flank_y = np.array([-0.02, -0.15, -0.3, -0.33, -0.16, -0.03])
    sh.polygon(flank_x, flank_y, _CREASE, 45, dz=np.array([0.05, 0.15, 0.2, 0.26, 0.2, 0.08]))
    sh.polygon(-0.025 + 0.035 * _C12[0], -0.3 + 0.028 * _C12[1], _SHINE, 110, dz=0.3)
    sh.line(np.array([-0.045, 0.0, 0.045]), np.array([-0.425, -0.44, -0.425]), _CREASE, 110, 0.011, dz=0.22)
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
        sh.polygon(nx + 0.038 * _C12[0], ny + 0.017 * (1 + 0.6 * sneer) * _C12[1], (70, 36, 32), 200, dz=0.14)
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


def eye(sh: Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
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


def brow(sh: Shapes, g: Callable[[str], np.ndarray], side: str, s: float) -> None:
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


def forehead(sh: Shapes, g: Callable[[str], np.ndarray]) -> None:
    inner = g("browInnerUp")
    for k in range(3):
        xx = 0.26 * _T_ARC7
        sh.line(xx, 0.54 + 0.07 * k + 0.025 * np.cos(np.pi * _T_ARC7 / 2), _CREASE, 150 * inner, 0.011)


def chin(sh: Shapes, g: Callable[[str], np.ndarray], jaw: np.ndarray, mouth: dict) -> None:
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


def mouth(sh: Shapes, g: Callable[[str], np.ndarray], jaw: np.ndarray) -> dict:
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
    _mouth_creases(sh, g, x, seam, corner_dy, jaw, (uo, ui, li, lo), np.minimum(1.0, pucker + funnel), lip_dz)
    _tongue(sh, li, mx, tongue, lip_dz)
    return {"lower_lip_bottom": lo[:, _MID_MOUTH : _MID_MOUTH + 1]}


def _mouth_creases(
    sh: Shapes,
    g: Callable[[str], np.ndarray],
    x: np.ndarray,
    seam: np.ndarray,
    corner_dy: np.ndarray,
    jaw: np.ndarray,
    lips: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    pushed: np.ndarray,
    lip_dz: np.ndarray,
) -> None:
    """The corners' hooks and dimples, and the vertical wrinkles of pushed-out lips (``pushed`` in [0, 1]).

    ``lips``: the upper lip's outer and inner edge, the lower lip's inner and outer edge, ``[T, points]``.
    """
    uo, ui, li, lo = lips
    xb = np.broadcast_to(x, ui.shape)
    for k, sgn, side in ((0, -1.0, "Right"), (x.shape[1] - 1, 1.0, "Left")):
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
    wrinkle = 170 * pushed
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


def _tongue(sh: Shapes, li: np.ndarray, mx: np.ndarray, tongue: np.ndarray, lip_dz: np.ndarray) -> None:
    """The tongue, sticking out over the lower lip (inner edge ``li``) as ``tongueOut`` grows."""
    top = li[:, _MID_MOUTH : _MID_MOUTH + 1] + 0.02
    tip = li[:, _MID_MOUTH : _MID_MOUTH + 1] - 0.05 - 0.15 * tongue
    half = 0.1 + 0.03 * tongue
    tx = _T_ARC7 * 0.999
    body_y = top - (top - tip) * np.sqrt(1 - tx**2) ** 0.7
    sh.polygon(
        np.concatenate([mx - half, mx + half * tx, mx + half], 1),
        np.concatenate([top, body_y, top], 1),
        TONGUE,
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


# -- drawing one frame --------------------------------------------------------------------------------
