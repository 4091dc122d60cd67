"""Per-clip features of a REACT2024-layout corpus, as Parquet, and the train-split normalisation.

Schema of ``features/<split>/frames.parquet`` (one row per clip frame; clips of a session adjacent,
frames in order)::

    session   string                         <site>/<session>
    clip      string                         <site>/<session>/<person>/<clip>
    frame     int32                          0 .. n_frames-1 (25 fps)
    face      fixed_size_list<float32>[58]   FaceVerse coefficients: 52 expression, 3 rotation, 3 translation
    audio     fixed_size_list<float32>[A]    audio features of the frame (encoder in the file metadata)
    emotion   fixed_size_list<float32>[25]   15 AU occurrences, valence, arousal, 8 expression probabilities

File metadata: ``encoder`` (name), ``audio_dim``, ``emotion_columns`` (JSON list).

``features/<split>/examples.parquet`` has one row per direction of each dyad (the REACT doubled
example list, so ``example`` indexes the neighbour matrix)::

    example int32, session string, speaker string, listener string, usable bool, reason string

An example is unusable when one of its clips was quarantined; the reason says which.

``features/<split>/neighbours.npy``: the corpus's ``neighbour_emotion_<split>.npy`` as bool
``[examples, examples]`` (absent when the corpus has none for the split).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reactdiff import layout
from reactdiff.corpus import ClipError, CorpusError, SplitIndex, read_clip
from reactdiff.noise import SIGMA_DATA

FRAMES_FILE = "frames.parquet"
EXAMPLES_FILE = "examples.parquet"
NEIGHBOURS_FILE = "neighbours.npy"  # the split's appropriate-reaction matrix, copied from the corpus
STATS_FILE = "norm_stats.json"
QUARANTINE_FILE = "quarantine.csv"
REPORT_FILE = "report.json"
CHECKED_FILES = (FRAMES_FILE, EXAMPLES_FILE)
"""The files of a split whose SHA-256 ``report.json`` records, so a reader can tell a mixed folder."""


@dataclass
class ClipFeatures:
    """Aligned per-frame arrays of one clip."""

    clip_id: str
    face: np.ndarray  # [frames, 58] float32
    audio: np.ndarray  # [frames, A] float32
    emotion: np.ndarray  # [frames, 25] float32

    @property
    def n_frames(self) -> int:
        return int(self.face.shape[0])


@dataclass(frozen=True)
class Rejection:
    """A clip that could not be used, and why. Rows of the quarantine report."""

    split: str
    clip_id: str
    path: str
    reason: str


@dataclass
class SessionResult:
    session: str
    clips: list[ClipFeatures] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def extract_session(
    root: Path,
    split: str,
    session: str,
    clip_ids: list[str],
    encoder,
    *,
    max_frames: int = layout.CLIP_FRAMES,
    frame_tolerance: int = 2,
) -> SessionResult:
    """Read and encode every clip of one session; a bad clip becomes a :class:`Rejection`, never an abort."""
    result = SessionResult(session)
    for clip_id in clip_ids:
        try:
            clip = read_clip(
                root,
                split,
                clip_id,
                audio_rate=encoder.sample_rate,
                max_frames=max_frames,
                frame_tolerance=frame_tolerance,
            )
            audio = encoder.encode(clip.audio, clip.n_frames)
        except ClipError as err:
            result.rejected.append(Rejection(split, clip_id, str(err.path), err.reason))
            continue
        if not np.all(np.isfinite(audio)):
            path = layout.clip_path(root, split, "audio", clip_id)
            result.rejected.append(Rejection(split, clip_id, str(path), "audio features are not finite"))
            continue
        result.clips.append(
            ClipFeatures(
                clip_id,
                clip.face.astype(np.float32, copy=False),
                audio.astype(np.float32, copy=False),
                clip.emotion.astype(np.float32, copy=False),
            )
        )
    return result


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(values, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def frames_table(clips: list[ClipFeatures], encoder_name: str, audio_dim: int) -> pa.Table:
    """Stack clips into the documented frames schema (see the module docstring)."""
    if clips:
        face = np.concatenate([c.face for c in clips])
        audio = np.concatenate([c.audio for c in clips])
        emotion = np.concatenate([c.emotion for c in clips])
    else:
        face = np.zeros((0, layout.N_COEFFS), np.float32)
        audio = np.zeros((0, audio_dim), np.float32)
        emotion = np.zeros((0, len(layout.EMOTION_COLUMNS)), np.float32)
    clip_col = [c.clip_id for c in clips for _ in range(c.n_frames)]
    table = pa.table(
        {
            "session": pa.array([layout.session_of(c) for c in clip_col], pa.string()),
            "clip": pa.array(clip_col, pa.string()),
            "frame": pa.array(
                np.concatenate([np.arange(c.n_frames) for c in clips]) if clips else [], pa.int32()
            ),
            "face": _fixed_list(face),
            "audio": _fixed_list(audio),
            "emotion": _fixed_list(emotion),
        }
    )
    metadata = {
        "encoder": encoder_name,
        "audio_dim": str(audio_dim),
        "emotion_columns": json.dumps(layout.EMOTION_COLUMNS),
    }
    return table.replace_schema_metadata(metadata)


def examples_table(index: SplitIndex, written: set[str], rejected: dict[str, str]) -> pa.Table:
    """The doubled example list with a usable flag: an example needs both of its clips."""
    usable, reasons = [], []
    for ex in index.examples:
        missing = [c for c in (ex.speaker, ex.listener) if c not in written]
        usable.append(not missing)
        reasons.append("; ".join(f"{c} quarantined: {rejected.get(c, 'not extracted')}" for c in missing))
    return pa.table(
        {
            "example": pa.array([ex.index for ex in index.examples], pa.int32()),
            "session": pa.array([ex.session for ex in index.examples], pa.string()),
            "speaker": pa.array([ex.speaker for ex in index.examples], pa.string()),
            "listener": pa.array([ex.listener for ex in index.examples], pa.string()),
            "usable": pa.array(usable, pa.bool_()),
            "reason": pa.array(reasons, pa.string()),
        }
    )


def column_array(table: pa.Table, name: str) -> np.ndarray:
    """A fixed-size-list column as a 2-D numpy array ``[rows, width]`` (zero-copy when possible)."""
    col = table.column(name).combine_chunks()
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


@dataclass
class ClipArrays:
    face: np.ndarray  # [frames, 58]
    audio: np.ndarray  # [frames, A]
    emotion: np.ndarray  # [frames, 25]


def read_frames(path: Path) -> dict[str, ClipArrays]:
    """Read a frames Parquet into per-clip arrays, keyed by clip id, frames in order."""
    table = pq.read_table(path)
    clips = table.column("clip").to_numpy(zero_copy_only=False)
    frames = table.column("frame").to_numpy()
    face, audio, emotion = (column_array(table, n) for n in ("face", "audio", "emotion"))
    out: dict[str, ClipArrays] = {}
    if len(clips) == 0:
        return out
    boundaries = np.flatnonzero(clips[1:] != clips[:-1]) + 1
    for start, stop in zip(np.r_[0, boundaries], np.r_[boundaries, len(clips)], strict=True):
        order = np.argsort(frames[start:stop], kind="stable") + start
        out[str(clips[start])] = ClipArrays(face[order], audio[order], emotion[order])
    return out


@dataclass
class NormStats:
    """Per-dimension mean and std of the train split, for face coefficients and audio features.

    Face coefficients are mapped to the model's space with standard deviation ``SIGMA_DATA`` (0.5) per
    dimension rather than 1, because the EDM preconditioning (sigma_data = 0.5, paper appendix A) assumes
    data of that scale; the noise levels of the sampler (0.01 .. 80) are relative to it. Audio features
    are conditions only and are standardised to unit variance.
    """

    face_mean: np.ndarray  # [58]
    face_std: np.ndarray  # [58]
    audio_mean: np.ndarray  # [A]
    audio_std: np.ndarray  # [A]
    frames: int = 0

    # A coefficient that never moves in the train split (e.g. tongueOut) would divide by zero.
    STD_FLOOR = 1e-3

    @classmethod
    def from_arrays(cls, face: np.ndarray, audio: np.ndarray) -> NormStats:
        face64, audio64 = face.astype(np.float64), audio.astype(np.float64)
        return cls(
            face64.mean(0).astype(np.float32),
            np.maximum(face64.std(0), cls.STD_FLOOR).astype(np.float32),
            audio64.mean(0).astype(np.float32),
            np.maximum(audio64.std(0), cls.STD_FLOOR).astype(np.float32),
            frames=int(face.shape[0]),
        )

    def normalise_face(self, face: np.ndarray) -> np.ndarray:
        """FaceVerse units ``[..., 58]`` -> model space (zero mean, std ``SIGMA_DATA`` per dimension)."""
        return ((face - self.face_mean) / self.face_std * SIGMA_DATA).astype(np.float32)

    def denormalise_face(self, face):
        """Inverse of :meth:`normalise_face`; works on numpy arrays and torch tensors alike."""
        scale = self.face_std / SIGMA_DATA
        if hasattr(face, "new_tensor"):
            return face * face.new_tensor(scale) + face.new_tensor(self.face_mean)
        return face * scale + self.face_mean

    def normalise_audio(self, audio: np.ndarray) -> np.ndarray:
        return ((audio - self.audio_mean) / self.audio_std).astype(np.float32)

    def to_json(self) -> dict:
        return {
            "face_mean": self.face_mean.tolist(),
            "face_std": self.face_std.tolist(),
            "audio_mean": self.audio_mean.tolist(),
            "audio_std": self.audio_std.tolist(),
            "frames": self.frames,
        }

    @classmethod
    def load(cls, path: Path) -> NormStats:
        raw = json.loads(Path(path).read_text())
        names = ("face_mean", "face_std", "audio_mean", "audio_std")
        arrays = {k: np.asarray(raw[k], np.float32) for k in names}
        return cls(**arrays, frames=int(raw.get("frames", 0)))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_digests(folder: Path) -> dict[str, str]:
    """``{file name: SHA-256}`` of a split folder's :data:`CHECKED_FILES`, for ``report.json``."""
    return {name: file_sha256(Path(folder) / name) for name in CHECKED_FILES}


def check_features(folder: Path, splits: Sequence[str]) -> None:
    """Raise :class:`CorpusError` unless the split files of ``folder`` are those its ``report.json``
    was written with: a folder mixing two runs of the features stage (files copied by hand, a run cut
    short by an older version) is refused before any work, naming every file that does not belong."""
    folder = Path(folder)
    fix = "run the features stage again (`dvc repro features`, or `python -m pipelines.features`)"
    report_path = folder / REPORT_FILE
    if not report_path.is_file():
        raise CorpusError(f"{report_path}: not found; {fix}", report_path)
    recorded = json.loads(report_path.read_text()).get("splits", {})
    problems = []
    for split in splits:
        expected = recorded.get(split, {}).get("sha256")
        if expected is None:
            problems.append(f"{report_path}: has no record of the {split!r} split's files; {fix}")
            continue
        for name in CHECKED_FILES:
            path = folder / split / name
            if not path.is_file():
                problems.append(f"{path}: missing; {fix}")
            elif file_sha256(path) != expected.get(name):
                problems.append(
                    f"{path}: not the file {report_path} was written with (the folder mixes two runs of "
                    f"the features stage); {fix}"
                )
    if problems:
        raise CorpusError("\n".join(problems), folder)
