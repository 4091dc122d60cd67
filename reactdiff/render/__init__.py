"""Rendering FaceVerse coefficients to faces, reaction videos and coefficient plots, without any weights.

The paper renders its 58 coefficients per frame through PIRender and the FaceVerse model, whose weights
are licensed downloads. This package ships a weight-free renderer instead and a seam to plug a neural
renderer in later:

- :mod:`~reactdiff.render.faces`: the contract :class:`FaceRenderer` (``render(coeffs [frames, 58]) ->
  uint8 [frames, size, size, 3]``), the registry the ``render`` stage goes through
  (:func:`build_renderer` / :func:`register_renderer`) and the coefficient conventions.
- :mod:`~reactdiff.render.cartoon` and :mod:`~reactdiff.render.face_parts`: :class:`CartoonRenderer`, a
  parametric cartoon head (ray-cast ellipsoids for head, ears, neck and shoulders; the face drawn over
  them as antialiased vector shapes, each of the 52 ARKit blendshapes driving a visible part).
- :mod:`~reactdiff.render.grid` and :mod:`~reactdiff.render.video`: :func:`compose_grid`,
  :func:`write_video`, :func:`probe_video`, :func:`write_reaction_video`: the speaker beside the real
  and the M generated listener reactions, as H.264 MP4 at 25 fps with the speaker's audio (through the
  ffmpeg binary that ``imageio-ffmpeg`` ships).
- :mod:`~reactdiff.render.plots`: :func:`plot_coefficients`, :func:`plot_metric_bars`,
  :func:`plot_denoising_curve`: PNG figures (matplotlib, Agg).
"""

from reactdiff.render.cartoon import CartoonRenderer
from reactdiff.render.face_parts import SUPERSAMPLE
from reactdiff.render.faces import (
    FACEVERSE_CAMERA_Z,
    FACEVERSE_FOCAL_PX,
    FACEVERSE_IMAGE_PX,
    MAX_ROTATION,
    MAX_SHIFT,
    PAPER_PLOT_DIMS,
    PITCH_DIM,
    POSE_DIMS,
    ROLL_DIM,
    ROTATION_SIGNS,
    TX_DIM,
    TY_DIM,
    TZ_DIM,
    YAW_DIM,
    ZOOM_RANGE,
    FaceRenderer,
    RendererFactory,
    available_renderers,
    build_renderer,
    coefficient_index,
    coefficient_name,
    neutral_coefficients,
    register_renderer,
)
from reactdiff.render.grid import GridLayout, compose_grid, grid_layout
from reactdiff.render.plots import plot_coefficients, plot_denoising_curve, plot_metric_bars
from reactdiff.render.video import probe_video, write_reaction_video, write_video

__all__ = [
    "FACEVERSE_CAMERA_Z",
    "FACEVERSE_FOCAL_PX",
    "FACEVERSE_IMAGE_PX",
    "MAX_ROTATION",
    "MAX_SHIFT",
    "PAPER_PLOT_DIMS",
    "PITCH_DIM",
    "POSE_DIMS",
    "ROLL_DIM",
    "ROTATION_SIGNS",
    "SUPERSAMPLE",
    "TX_DIM",
    "TY_DIM",
    "TZ_DIM",
    "YAW_DIM",
    "ZOOM_RANGE",
    "CartoonRenderer",
    "FaceRenderer",
    "GridLayout",
    "RendererFactory",
    "available_renderers",
    "build_renderer",
    "coefficient_index",
    "coefficient_name",
    "compose_grid",
    "grid_layout",
    "neutral_coefficients",
    "plot_coefficients",
    "plot_denoising_curve",
    "plot_metric_bars",
    "probe_video",
    "register_renderer",
    "write_reaction_video",
    "write_video",
]
