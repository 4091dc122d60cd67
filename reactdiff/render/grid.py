"""The speaker beside the real and the generated listeners: the layout of a composed frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

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
