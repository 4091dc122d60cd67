"""The browser demo of the live listener service: a session of the corpus played to it, the M listeners
drawn as their reactions arrive.

``python -m reactdiff.serve --demo data_sample`` serves, besides ``/listen``:

- ``GET /demo``: the page (``reactdiff/resources/demo.html``). It fetches the session, plays the speaker's
  voice, and streams the speaker's face and audio to ``/listen`` window by window in real time, as an
  agent would; it draws what the service sends back.
- ``GET /demo/session``: one clip of the corpus as the page needs it: the speaker's 58 coefficients per
  frame and 16 kHz audio (base64 ``f32le``, as in the protocol), and the listener's first frame.

The pictures come from the project's own renderer, server-side: a ``start`` message with
``"render": {"tile": 96, "every": 4}`` makes the service follow each ``reactions`` message with a
``frames`` message, every ``every``-th frame of the window drawn as one JPEG of the speaker beside the M
listeners (:class:`WindowPainter`). Any client can ask for it; it costs about 4 ms of CPU per face drawn.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from reactdiff import layout
from reactdiff.corpus import read_clip, read_split
from reactdiff.render import build_renderer, compose_grid, grid_layout

PAGE = "demo.html"
MIN_TILE, MAX_TILE = 32, 256


@dataclass(frozen=True)
class DemoSession:
    """The speaker side of one example of a split, as the demo page streams it."""

    name: str  # "<split> example <k>: <speaker clip> -> <listener clip>"
    face: np.ndarray  # float32 [frames, 58], the speaker's coefficients
    audio: np.ndarray  # float32 [frames * audio_rate // fps], mono in [-1, 1]
    listener_start: np.ndarray  # float32 [58], the listener's first frame
    audio_rate: int

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "frames": len(self.face),
            "fps": layout.FPS,
            "audio_rate": self.audio_rate,
            "face": _f32le(self.face),
            "audio": _f32le(self.audio),
            "listener_start": self.listener_start.astype(float).tolist(),
        }


def _f32le(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def load_demo_session(
    root: Path, split: str = "test", example: int = 0, audio_rate: int = layout.MODEL_SAMPLE_RATE
) -> DemoSession:
    """Example ``example`` of ``split`` in the corpus at ``root`` (any REACT2024-layout corpus)."""
    index = read_split(Path(root), split)
    if not 0 <= example < len(index.examples):
        raise ValueError(f"{root}: the {split} split has {len(index.examples)} examples, not {example + 1}")
    chosen = index.examples[example]
    speaker = read_clip(root, split, chosen.speaker, audio_rate=audio_rate)
    listener = read_clip(root, split, chosen.listener, audio_rate=audio_rate)
    frames = min(speaker.n_frames, listener.n_frames)
    return DemoSession(
        name=f"{split} example {example}: {chosen.speaker} -> {chosen.listener}",
        face=speaker.face[:frames].astype(np.float32),
        audio=speaker.audio[: frames * audio_rate // layout.FPS].astype(np.float32),
        listener_start=listener.face[0].astype(np.float32),
        audio_rate=audio_rate,
    )


def page() -> str:
    return resources.files("reactdiff.resources").joinpath(PAGE).read_text(encoding="utf-8")


def render_options(value: object, window: int) -> tuple[int, int] | None:
    """``(tile, every)`` from a start message's ``render`` field (absent or null: no pictures)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"tile", "every"}:
        raise ValueError('render must be null or {"tile": <pixels>, "every": <frames>}')
    tile, every = value.get("tile", 96), value.get("every", 4)
    for name, number, low, high in (("tile", tile, MIN_TILE, MAX_TILE), ("every", every, 1, window)):
        if not isinstance(number, int) or isinstance(number, bool) or not low <= number <= high:
            raise ValueError(f"render.{name} must be an integer in [{low}, {high}], got {number!r}")
    return tile, every


class WindowPainter:
    """Draws windows of one conversation: the speaker large on the left, the M listeners in a grid."""

    def __init__(self, samples: int, tile: int, every: int, quality: int = 80) -> None:
        self.every, self.quality = every, quality
        self.listeners = build_renderer("cartoon", size=tile)
        self.speaker = build_renderer("cartoon", size=grid_layout(samples, tile).panel)

    def paint(self, speaker_face: np.ndarray, reactions: np.ndarray) -> list[str]:
        """``speaker_face [w, 58]``, ``reactions [M, w, 58]`` -> base64 JPEGs of frames ``every - 1``,
        ``2 every - 1``, ... of the window (the last frame always among them when ``every`` divides ``w``)."""
        picked = np.arange(self.every - 1, speaker_face.shape[0], self.every)
        speaker = self.speaker.render(speaker_face[picked])
        listeners = np.stack([self.listeners.render(r[picked]) for r in reactions])
        images = []
        for frame in compose_grid(speaker, None, listeners):
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="JPEG", quality=self.quality)
            images.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return images
