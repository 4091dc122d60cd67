"""The renderer contract, its registry, and the FaceVerse conventions every renderer shares."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from reactdiff.layout import N_COEFFS, N_EXPRESSION
from reactdiff.reference import POSE_NAMES, coefficient_stats, expression_names

# --- FaceVerse pose conventions (see reactdiff.render.cartoon's docstring) ---------------------------
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


EXPRESSION_INDEX = {name: i for i, name in enumerate(expression_names())}


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
    if dim in EXPRESSION_INDEX:
        return EXPRESSION_INDEX[dim]
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


# --- the renderer seam --------------------------------------------------------------------------------
RendererFactory = Callable[..., FaceRenderer]


def _cartoon(**kwargs: object) -> FaceRenderer:
    from reactdiff.render.cartoon import CartoonRenderer

    return CartoonRenderer(**kwargs)  # type: ignore[arg-type]


_RENDERERS: dict[str, RendererFactory] = {"cartoon": _cartoon}


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
