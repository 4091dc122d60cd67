"""Reaction videos: composed frames as H.264 MP4 at 25 fps with the speaker's audio, through the ffmpeg
binary that ``imageio-ffmpeg`` ships."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from reactdiff.layout import FPS, MODEL_SAMPLE_RATE
from reactdiff.render.faces import build_renderer
from reactdiff.render.grid import GridLayout, compose_grid, grid_layout


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
        proc = subprocess.Popen(args, stdin=subprocess.PIPE if stdin_chunks is not None else None, stderr=err)
        fed = 0
        try:
            if stdin_chunks is not None and proc.stdin is not None:
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


_QUIET = ["-hide_banner", "-loglevel", "error", "-y"]


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
        yield first
        for chunk in chunks:
            if chunk.shape[1:] != first.shape[1:]:
                raise ValueError(f"frame size changed from {first.shape[1:]} to {chunk.shape[1:]} in {path}")
            yield chunk

    ffmpeg = _ffmpeg()
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}.") as tmp:
        video = os.path.join(tmp, "video.mp4")
        encode = [*_QUIET, "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps)]
        encode += ["-i", "-", "-an", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264"]
        encode += ["-preset", preset, "-crf", str(crf), *(["-threads", str(threads)] if threads else [])]
        n = _run_ffmpeg([ffmpeg, *encode, "-pix_fmt", "yuv420p", "-movflags", "+faststart", video], checked())
        result = video
        if audio is not None:
            wav = os.path.join(tmp, "audio.wav")
            soundfile.write(
                wav, _prepare_audio(audio, round(n / fps * audio_rate)), audio_rate, subtype="PCM_16"
            )
            result = os.path.join(tmp, "muxed.mp4")
            mux = [*_QUIET, "-i", video, "-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
            _run_ffmpeg([ffmpeg, *mux, "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", result])
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
