"""Training examples cut from (speaker, listener) sequences, stored once and read memory-mapped.

A window is the paper's segment ``[h-w+1, h]``: the current listener window of ``w`` frames, the
previous listener window ``[h-2w+1, h-w]``, the speaker's face and audio features over the current
window, and the global index ``h`` of its last frame in the conversation.

Rather than materialising every window (each frame would be copied ``2w / stride`` times), the
``windows`` stage writes each example's normalised sequences once, as an uncompressed Arrow IPC file
that :class:`WindowDataset` memory-maps, plus a small index of window start rows. A batch is a
vectorised gather from the mapped arrays, so the trainer never loads the whole split.

``windows/<split>/sequences.arrow``: one row per frame, examples contiguous::

    example int32, frame int32,
    listener fixed_size_list<float32>[58], speaker_face fixed_size_list<float32>[58],
    speaker_audio fixed_size_list<float32>[A]             (all normalised with train statistics)

``windows/<split>/index.parquet``: one row per window::

    example int32, session string, first_row int64 (row of the example's frame 0),
    start_row int64 (row of the window's first frame), h int32 (global index of its last frame)

Before the conversation starts there is no past window: its missing frames are the listener's first
frame (``initial_past="first_frame"``, the state a live generator is reset with) or zeros, the train
mean once normalised (``"mean"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reactdiff import atomic, layout
from reactdiff.corpus import CorpusError
from reactdiff.features import EXAMPLES_FILE, FRAMES_FILE, NormStats, read_frames

SEQUENCES_FILE = "sequences.arrow"
INDEX_FILE = "index.parquet"
META_FILE = "meta.json"


def window_starts(n_frames: int, w: int, stride: int) -> np.ndarray:
    """First frames of the training windows of a sequence: every ``stride`` frames, all windows complete.

    The last window is aligned to the sequence end when the stride does not land there, so every
    frame is the target of at least one window.
    """
    if n_frames < w:
        return np.zeros(0, np.int64)
    starts = np.arange(0, n_frames - w + 1, stride, dtype=np.int64)
    if starts[-1] != n_frames - w:
        starts = np.append(starts, n_frames - w)
    return starts


@dataclass
class SplitWindows:
    sequences: pa.Table
    index: pa.Table
    meta: dict


def build_split_windows(features_split_dir: Path, stats: NormStats, w: int, stride: int) -> SplitWindows:
    """Cut every usable example of one split into windows (see the module docstring for the layout)."""
    examples = pq.read_table(Path(features_split_dir) / EXAMPLES_FILE).to_pylist()
    clips = read_frames(Path(features_split_dir) / FRAMES_FILE)
    seq_parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("example", "frame", "listener", "face", "audio")
    }
    idx_parts: dict[str, list] = {k: [] for k in ("example", "session", "first_row", "start_row", "h")}
    row, skipped = 0, []
    for ex in examples:
        if not ex["usable"]:
            continue
        speaker, listener = clips[ex["speaker"]], clips[ex["listener"]]
        n = min(len(speaker.face), len(listener.face))
        starts = window_starts(n, w, stride)
        if len(starts) == 0:
            skipped.append(ex["example"])
            continue
        seq_parts["example"].append(np.full(n, ex["example"], np.int32))
        seq_parts["frame"].append(np.arange(n, dtype=np.int32))
        seq_parts["listener"].append(stats.normalise_face(listener.face[:n]))
        seq_parts["face"].append(stats.normalise_face(speaker.face[:n]))
        seq_parts["audio"].append(stats.normalise_audio(speaker.audio[:n]))
        idx_parts["example"].append(np.full(len(starts), ex["example"], np.int32))
        idx_parts["session"].extend([ex["session"]] * len(starts))
        idx_parts["first_row"].append(np.full(len(starts), row, np.int64))
        idx_parts["start_row"].append(row + starts)
        idx_parts["h"].append((starts + w - 1).astype(np.int32))
        row += n
    audio_dim = len(stats.audio_mean)

    def cat(parts: list[np.ndarray], width: int | None = None, dtype=np.float32) -> np.ndarray:
        if parts:
            return np.concatenate(parts)
        return np.zeros((0, width) if width else 0, dtype)

    sequences = pa.table(
        {
            "example": pa.array(cat(seq_parts["example"], dtype=np.int32)),
            "frame": pa.array(cat(seq_parts["frame"], dtype=np.int32)),
            "listener": _fixed(cat(seq_parts["listener"], layout.N_COEFFS)),
            "speaker_face": _fixed(cat(seq_parts["face"], layout.N_COEFFS)),
            "speaker_audio": _fixed(cat(seq_parts["audio"], audio_dim)),
        }
    )
    index = pa.table(
        {
            "example": pa.array(cat(idx_parts["example"], dtype=np.int32)),
            "session": pa.array(idx_parts["session"], pa.string()),
            "first_row": pa.array(cat(idx_parts["first_row"], dtype=np.int64)),
            "start_row": pa.array(cat(idx_parts["start_row"], dtype=np.int64)),
            "h": pa.array(cat(idx_parts["h"], dtype=np.int32)),
        }
    )
    meta = {
        "w": w,
        "stride": stride,
        "audio_dim": audio_dim,
        "windows": index.num_rows,
        "frames": sequences.num_rows,
        "examples": len(seq_parts["example"]),
        "examples_too_short": skipped,
    }
    return SplitWindows(sequences, index, meta)


def write_split_windows(windows: SplitWindows, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    atomic.write_arrow(windows.sequences, out_dir / SEQUENCES_FILE)
    atomic.write_parquet(windows.index, out_dir / INDEX_FILE)
    atomic.write_json(windows.meta, out_dir / META_FILE)


def _fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values, np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


@dataclass
class WindowBatch:
    """A batch of windows; every array normalised. Shapes name ``B`` batch, ``w`` frames."""

    listener: np.ndarray  # [B, w, 58] current listener window (the target)
    past: np.ndarray  # [B, w, 58] previous listener window
    speaker_face: np.ndarray  # [B, H + w, 58]: the H speaker frames before the window, then the window
    speaker_audio: np.ndarray  # [B, H + w, A]
    frame_index: np.ndarray  # [B] int64: global index h of the window's last frame
    example: np.ndarray  # [B] int32
    # [B, 58] mean of the listener's frames from the conversation's start to the window's start (the
    # past's mean when there are none): the listener's own level, which one previous window cannot tell
    history: np.ndarray | None = None


class WindowDataset:
    """Memory-mapped windows of one split, written by the ``windows`` stage."""

    def __init__(
        self, split_dir: Path | str, initial_past: str = "first_frame", speaker_history: int = 0
    ) -> None:
        split_dir = Path(split_dir)
        if initial_past not in ("first_frame", "mean"):
            raise ValueError(f"initial_past must be 'first_frame' or 'mean', got {initial_past!r}")
        if speaker_history < 0:
            raise ValueError(f"speaker_history must be >= 0, got {speaker_history}")
        self.initial_past = initial_past
        self.speaker_history = int(speaker_history)
        files = (META_FILE, SEQUENCES_FILE, INDEX_FILE)
        missing = [name for name in files if not (split_dir / name).is_file()]
        if missing:
            raise CorpusError(
                f"{split_dir}: no {', '.join(missing)}; build the windows first (`dvc repro windows`, or "
                "`python -m pipelines.windows`)",
                split_dir,
            )
        self.meta = json.loads((split_dir / META_FILE).read_text())
        self.w = int(self.meta["w"])
        # Keep the mapping open for the dataset's lifetime: the numpy views below point into it.
        self._source = pa.memory_map(str(split_dir / SEQUENCES_FILE), "r")
        table = pa.ipc.open_file(self._source).read_all()
        self.listener = _mapped(table, "listener")
        self.speaker_face = _mapped(table, "speaker_face")
        self.speaker_audio = _mapped(table, "speaker_audio")
        index = pq.read_table(split_dir / INDEX_FILE)
        self.example = index.column("example").to_numpy()
        self.first_row = index.column("first_row").to_numpy()
        self.start_row = index.column("start_row").to_numpy()
        self.h = index.column("h").to_numpy().astype(np.int64)
        self.sessions = index.column("session").to_numpy(zero_copy_only=False)
        # Running sums of the listener frames, row r holding the sum over rows < r (float64: a whole
        # split's sum must not round away the mean of a few frames).
        self._listener_sums = np.zeros((len(self.listener) + 1, self.listener.shape[1]))
        np.cumsum(self.listener, axis=0, dtype=np.float64, out=self._listener_sums[1:])

    def __len__(self) -> int:
        return len(self.start_row)

    @property
    def audio_dim(self) -> int:
        return int(self.speaker_audio.shape[1])

    def frames_before(self, indices: np.ndarray) -> np.ndarray:
        """``[B]`` int64: listener frames of the conversation before window ``i`` (its history's count)."""
        indices = np.asarray(indices, dtype=np.int64)
        return self.start_row[indices] - self.first_row[indices]

    def has_previous(self, indices: np.ndarray) -> np.ndarray:
        """``[B]`` bool: whether window ``i`` has a whole window before it in its conversation."""
        return self.frames_before(indices) >= self.w

    def batch(self, indices: np.ndarray, windows_back: int = 0) -> WindowBatch:
        """Windows ``indices``; with ``windows_back = k`` the windows ``k * w`` frames before them instead
        (the conditions a rollout of the previous window needs; see :meth:`has_previous`)."""
        indices = np.asarray(indices, dtype=np.int64)
        offsets = np.arange(self.w, dtype=np.int64)
        start = self.start_row[indices] - windows_back * self.w
        if np.any(start < self.first_row[indices]):
            raise ValueError(f"a window {windows_back} windows back starts before its conversation")
        rows = start[:, None] + offsets  # [B, w]
        past_rows = rows - self.w
        first = self.first_row[indices, None]
        before_start = past_rows < first
        past = self.listener[np.where(before_start, first, past_rows)]
        if self.initial_past == "mean":
            past = np.where(before_start[..., None], np.float32(0), past)
        # The speaker frames before the window; before the conversation starts, its first frame (as the
        # live generator is fed before it has seen more).
        history = np.arange(-self.speaker_history, self.w, dtype=np.int64)
        speaker_rows = np.maximum(start[:, None] + history, first)
        count = (start - self.first_row[indices])[:, None]
        total = self._listener_sums[start] - self._listener_sums[self.first_row[indices]]
        history = np.where(count > 0, total / np.maximum(count, 1), past.mean(axis=1)).astype(np.float32)
        return WindowBatch(
            listener=self.listener[rows],
            past=past,
            history=history,
            speaker_face=self.speaker_face[speaker_rows],
            speaker_audio=self.speaker_audio[speaker_rows],
            frame_index=self.h[indices] - windows_back * self.w,
            example=self.example[indices],
        )


def _mapped(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if column.num_chunks != 1:
        column = pa.chunked_array([column.combine_chunks()])
    chunk = column.chunk(0)
    return chunk.flatten().to_numpy(zero_copy_only=True).reshape(-1, chunk.type.list_size)
