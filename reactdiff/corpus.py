"""Reader of the REACT2024 layout (see :mod:`reactdiff.layout`) with strict validation.

Two levels of failure are kept apart on purpose:

* :class:`CorpusError` - the split itself is unusable (no split csv, a malformed one, a neighbour
  matrix that does not match it). Nothing downstream can run, so the stage must stop.
* :class:`ClipError` - one clip is unusable (a missing or corrupt modality file, modalities that
  disagree in length). The caller decides whether to stop or to drop the dyads that use the clip.

Every message names the offending file and says what to do about it, because the people who hit
these errors are pointing the pipeline at a licensed corpus we cannot see.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reactdiff import layout
from reactdiff.errors import UserError

_KNOWN_EXTENSIONS = tuple(ext for _, ext in layout.MODALITY_DIRS.values())
_FIX_CORPUS = "point data.root at a REACT2024 folder, or run `dvc repro make_sample`"


class CorpusError(UserError):
    """A split-level problem; ``str()`` names the file and the fix. ``path`` is that file, when known."""

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else Path(path)

    def __reduce__(self) -> tuple[type[CorpusError], tuple[str, Path | None]]:
        # Keeps the error intact across process pools (features.runner = "process" / dask).
        return (type(self), (self.message, self.path))


class ClipError(Exception):
    """One clip is unusable. ``str()`` is ``f"{path}: {reason}"``."""

    def __init__(self, clip_id: str, path: Path, reason: str) -> None:
        self.clip_id = clip_id
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type[ClipError], tuple[str, Path, str]]:
        return (type(self), (self.clip_id, self.path, self.reason))


@dataclass(frozen=True)
class Example:
    """One direction of a dyad: ``index`` is its row (and column) in the neighbour matrix.

    ``session`` is the speaker's ``site/session``.
    """

    index: int
    speaker: str
    listener: str
    session: str


@dataclass(frozen=True)
class SplitIndex:
    """A parsed split: its dyads as listed, the doubled examples, and the neighbour matrix.

    ``examples`` has ``2 * len(dyads)`` entries: example ``k < len(dyads)`` is dyad ``k`` as listed,
    example ``k + len(dyads)`` is the same dyad with roles swapped. ``neighbours`` is bool
    ``[len(examples), len(examples)]``, or ``None`` when the split ships no neighbour file.
    """

    root: Path
    split: str
    dyads: list[tuple[str, str]]
    examples: list[Example]
    neighbours: np.ndarray | None

    def clips(self) -> list[str]:
        """Unique clip ids of the split, sorted."""
        return sorted({clip for dyad in self.dyads for clip in dyad})

    def sessions(self) -> list[str]:
        """Unique ``site/session`` ids of the split's clips, sorted."""
        return sorted({layout.session_of(clip) for clip in self.clips()})

    def appropriate(self, k: int) -> np.ndarray:
        """Indices ``j`` (int64 ``[n]``, ascending) whose listener reaction suits example ``k``'s speaker."""
        if self.neighbours is None:
            path = layout.neighbour_path(self.root, self.split)
            raise CorpusError(
                f"{path}: the {self.split} split has no neighbour matrix, so appropriate reactions are "
                f"unknown; add neighbour_emotion_{self.split}.npy or use a split that ships one",
                path,
            )
        n = len(self.examples)
        if not -n <= k < n:
            raise IndexError(f"example {k} out of range for the {self.split} split ({n} examples)")
        return np.flatnonzero(self.neighbours[k]).astype(np.int64)


@dataclass
class Clip:
    """One clip's modalities, aligned and truncated to ``n_frames`` frames at ``layout.FPS``.

    ``face`` float32 ``[n_frames, 58]``; ``audio`` float32 ``[n_frames * audio_rate // 25]`` mono;
    ``emotion`` float32 ``[n_frames, 25]`` in ``layout.EMOTION_COLUMNS`` order.
    """

    clip_id: str
    face: np.ndarray
    audio: np.ndarray
    emotion: np.ndarray
    audio_rate: int
    n_frames: int


def normalise_clip_id(raw: str) -> str:
    """``' NoXI\\s1\\Expert_video\\1.wav '`` -> ``'NoXI/s1/Expert_video/1'``.

    Strips whitespace, turns backslashes into slashes, drops surrounding slashes and a modality
    extension (``.wav``, ``.npy``, ``.csv``, ``.mp4``, any case). No other check is made here.
    """
    clip = raw.strip().replace("\\", "/").strip("/")
    lower = clip.lower()
    for ext in _KNOWN_EXTENSIONS:
        if lower.endswith(ext):
            clip = clip[: -len(ext)]
            break
    return clip


def _parse_clip_id(raw: str, path: Path, line: int) -> str:
    clip = normalise_clip_id(raw)
    parts = clip.split("/")
    if len(parts) != 4 or not all(part.strip() for part in parts):
        raise CorpusError(
            f"{path}, line {line}: {raw.strip()!r} is not a clip id of the form "
            f"<site>/<session>/<person>/<clip>; fix the row or {_FIX_CORPUS}",
            path,
        )
    return clip


def _looks_like_dyad(row: list[str]) -> bool:
    """A header never holds two 4-part clip paths, so such a first row is data, not a header."""
    if len(row) < 3:
        return False
    return all(len(normalise_clip_id(cell).split("/")) == 4 for cell in row[1:3])


def _read_dyads(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CorpusError(f"{path}: cannot read the split list ({exc}); {_FIX_CORPUS}", path) from exc
    if rows and not _looks_like_dyad(rows[0][1]):
        rows = rows[1:]  # the header line
    if not rows:
        raise CorpusError(
            f"{path}: the split list has no dyads; it needs a header line and rows "
            f"'<index>,<speaker clip>,<listener clip>'; {_FIX_CORPUS}",
            path,
        )
    dyads = []
    for line, row in rows:
        if len(row) < 3:
            raise CorpusError(
                f"{path}, line {line}: expected '<index>,<speaker clip>,<listener clip>', found "
                f"{len(row)} column(s) in {','.join(row)!r}; fix the row or {_FIX_CORPUS}",
                path,
            )
        dyads.append((_parse_clip_id(row[1], path, line), _parse_clip_id(row[2], path, line)))
    return dyads


def _read_neighbours(path: Path, n: int) -> np.ndarray | None:
    if not path.exists():
        return None
    fix = f"regenerate it for the current split list, or {_FIX_CORPUS}"
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise CorpusError(f"{path}: cannot read the neighbour matrix ({exc}); {fix}", path) from exc
    if not isinstance(matrix, np.ndarray):  # an .npz archive saved under the .npy name
        raise CorpusError(f"{path}: expected a single array, found an archive; {fix}", path)
    if matrix.shape != (n, n):
        raise CorpusError(
            f"{path}: neighbour matrix has shape {matrix.shape}, expected ({n}, {n}) = twice the "
            f"{n // 2} dyads of the split list in each dimension; {fix}",
            path,
        )
    if matrix.dtype == np.bool_:
        return matrix
    # 0/1 in an integer or float array is a bool matrix saved carelessly; any other value (a distance,
    # a probability) means this is not a neighbour matrix at all and must not be silently thresholded.
    if not (np.issubdtype(matrix.dtype, np.integer) or np.issubdtype(matrix.dtype, np.floating)):
        raise CorpusError(f"{path}: neighbour matrix has dtype {matrix.dtype}, expected bool; {fix}", path)
    if not np.isin(matrix, (0, 1)).all():
        raise CorpusError(
            f"{path}: neighbour matrix of dtype {matrix.dtype} holds values other than 0 and 1, so it "
            f"is not a bool neighbour matrix; {fix}",
            path,
        )
    return matrix.astype(bool)


def read_split(root: Path, split: str) -> SplitIndex:
    """Read ``<root>/<split>.csv`` and, when present, ``<root>/neighbour_emotion_<split>.npy``.

    Raises :class:`CorpusError` when the folder or the split list is missing or malformed, or when the
    neighbour matrix is not bool ``[2 * rows, 2 * rows]``.
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"{root}: data root does not exist or is not a folder; {_FIX_CORPUS}", root)
    list_path = layout.split_list_path(root, split)
    if not list_path.is_file():
        raise CorpusError(
            f"{list_path}: split list for the {split!r} split not found; {_FIX_CORPUS}",
            list_path,
        )
    dyads = _read_dyads(list_path)
    rows = len(dyads)
    forward = [Example(k, s, l, layout.session_of(s)) for k, (s, l) in enumerate(dyads)]
    swapped = [Example(k + rows, l, s, layout.session_of(l)) for k, (s, l) in enumerate(dyads)]
    examples = forward + swapped
    neighbours = _read_neighbours(layout.neighbour_path(root, split), len(examples))
    return SplitIndex(root=root, split=split, dyads=dyads, examples=examples, neighbours=neighbours)


def _read_face(clip_id: str, path: Path, fix: str) -> np.ndarray:
    """The 3DMM file as float32 ``[frames, 58]``; the real corpus stores ``[751, 1, 58]``."""
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ClipError(clip_id, path, f"unreadable 3DMM .npy file ({exc}); {fix}") from exc
    if not isinstance(raw, np.ndarray):
        raise ClipError(clip_id, path, f"expected one array, found an .npz archive; {fix}")
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ClipError(clip_id, path, f"3DMM array has dtype {raw.dtype}, expected float; {fix}")
    face = np.squeeze(raw)
    if face.ndim == 1 and raw.ndim >= 2 and raw.shape[-1] == layout.N_COEFFS:
        face = face[None]  # a one-frame clip squeezes to a vector; keep its frame axis
    if face.ndim != 2:
        raise ClipError(
            clip_id,
            path,
            f"3DMM array has shape {raw.shape}, expected [frames, {layout.N_COEFFS}] after dropping "
            f"singleton axes; {fix}",
        )
    if face.shape[1] != layout.N_COEFFS:
        raise ClipError(
            clip_id,
            path,
            f"3DMM array has {face.shape[1]} coefficients per frame (shape {raw.shape}), expected "
            f"{layout.N_COEFFS} FaceVerse coefficients; {fix}",
        )
    face = face.astype(np.float32)
    bad = ~np.isfinite(face)
    if bad.any():
        frames = np.flatnonzero(bad.any(axis=1))
        raise ClipError(
            clip_id,
            path,
            f"3DMM array contains {int(bad.sum())} NaN/inf value(s) (or values beyond float32 range) in "
            f"{frames.size} frame(s), first at frame {int(frames[0])}; {fix}",
        )
    return face


def _emotion_header(row: list[str]) -> list[int] | None:
    """Column permutation into ``EMOTION_COLUMNS`` order if ``row`` is a known header, else ``None``."""
    names = [cell.strip().lower() for cell in row]
    wanted = [name.lower() for name in layout.EMOTION_COLUMNS]
    if sorted(names) != sorted(wanted):
        return None
    return [names.index(name) for name in wanted]


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_emotion(clip_id: str, path: Path, fix: str) -> np.ndarray:
    """The emotion csv as float32 ``[frames, 25]`` in ``layout.EMOTION_COLUMNS`` order."""
    n_cols = len(layout.EMOTION_COLUMNS)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = [(i, row) for i, row in enumerate(csv.reader(f), start=1) if any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ClipError(clip_id, path, f"unreadable emotion csv ({exc}); {fix}") from exc
    if not rows:
        raise ClipError(clip_id, path, f"emotion csv is empty; {fix}")
    order = list(range(n_cols))
    first_line, first = rows[0]
    # A header has no numeric cell; a data row with one bad cell is reported as data below.
    if not any(_is_number(cell) for cell in first):
        header = _emotion_header(first)
        if header is None:
            raise ClipError(
                clip_id,
                path,
                f"emotion csv header on line {first_line} is {','.join(c.strip() for c in first)!r}; "
                f"expected the {n_cols} columns {','.join(layout.EMOTION_COLUMNS)} (any order, any case) "
                f"or no header at all; {fix}",
            )
        order = header
        rows = rows[1:]
    if not rows:
        raise ClipError(clip_id, path, f"emotion csv has a header but no frames; {fix}")
    for line, row in rows:
        if len(row) != n_cols:
            raise ClipError(
                clip_id,
                path,
                f"emotion csv line {line} has {len(row)} column(s), expected {n_cols} "
                f"({','.join(layout.EMOTION_COLUMNS)}); {fix}",
            )
    cells = [row for _, row in rows]
    try:
        values = np.array(cells, dtype=np.float64)
    except ValueError:
        # Only on failure: find the first offending cell so the message can point at it.
        for line, row in rows:
            for col, cell in enumerate(row):
                if not _is_number(cell):
                    raise ClipError(
                        clip_id,
                        path,
                        f"emotion csv line {line}, column {col + 1} holds {cell.strip()!r}, which is not "
                        f"a number; {fix}",
                    ) from None
        raise
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise ClipError(
            clip_id,
            path,
            f"emotion csv has {int(bad.sum())} NaN/inf value(s), first on line {rows[r][0]}, "
            f"column {c + 1}; {fix}",
        )
    return values[:, order].astype(np.float32)


def _read_audio(clip_id: str, path: Path, audio_rate: int, fix: str) -> np.ndarray:
    """Mono float32 ``[samples]`` at ``audio_rate``, decoded by :func:`reactdiff.audio.load_wav`."""
    # Imported here so reading split lists never pulls in the audio stack.
    from reactdiff.audio import AudioError, load_wav

    try:
        audio = load_wav(path, target_rate=audio_rate)
    except AudioError as exc:
        raise ClipError(clip_id, path, f"{exc.reason}; {fix}") from exc
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ClipError(clip_id, path, f"decoded audio has shape {audio.shape}, expected mono; {fix}")
    if audio.size == 0:
        raise ClipError(clip_id, path, f"audio file holds no samples; {fix}")
    if not np.isfinite(audio).all():
        raise ClipError(clip_id, path, f"audio contains NaN/inf samples; {fix}")
    return audio


def read_clip(
    root: Path,
    split: str,
    clip_id: str,
    audio_rate: int = layout.MODEL_SAMPLE_RATE,
    max_frames: int = layout.CLIP_FRAMES,
    frame_tolerance: int = 2,
) -> Clip:
    """Read and validate one clip's face, audio and emotion; raises :class:`ClipError` on bad input.

    Lengths are compared in frames at ``layout.FPS``: face rows, emotion rows and
    ``samples * 25 // audio_rate`` for audio. The real corpus has 751 face rows against 750 emotion
    and audio frames, so gaps up to ``frame_tolerance`` frames are normal. All modalities are cut to
    ``n_frames = min(lengths, max_frames)``; audio to ``n_frames * audio_rate // 25`` samples.
    """
    if audio_rate <= 0 or max_frames < 1 or frame_tolerance < 0:
        raise ValueError(
            f"need audio_rate > 0, max_frames >= 1, frame_tolerance >= 0; got {audio_rate}, "
            f"{max_frames}, {frame_tolerance}"
        )
    root = Path(root)
    clip_id = normalise_clip_id(clip_id)
    drop = f"remove the dyads that use {clip_id} from {layout.split_list_path(root, split)}"

    paths = {m: layout.clip_path(root, split, m, clip_id) for m in layout.REQUIRED_MODALITIES}
    for modality, path in paths.items():
        if not path.is_file():
            reason = f"missing {modality} file for clip {clip_id}; restore it from the corpus or {drop}"
            raise ClipError(clip_id, path, reason)

    face = _read_face(clip_id, paths["face"], f"re-extract the 3DMM coefficients for this clip or {drop}")
    emotion = _read_emotion(
        clip_id, paths["emotion"], f"re-extract the emotion labels for this clip or {drop}"
    )
    audio = _read_audio(clip_id, paths["audio"], audio_rate, f"re-export the audio for this clip or {drop}")

    lengths = {
        "face": face.shape[0],
        "emotion": emotion.shape[0],
        "audio": audio.size * layout.FPS // audio_rate,
    }
    shortest = min(lengths, key=lengths.__getitem__)
    longest = max(lengths, key=lengths.__getitem__)
    if lengths[longest] - lengths[shortest] > frame_tolerance:
        listing = ", ".join(f"{m} {n}" for m, n in lengths.items())
        what = (
            f"audio is shorter than it should be: {audio.size} samples at {audio_rate} Hz = "
            f"{lengths['audio']} frames ({audio.size / audio_rate:.2f} s), but {longest} has "
            f"{lengths[longest]} frames"
            if shortest == "audio"
            else f"{shortest} has {lengths[shortest]} frames but {longest} has {lengths[longest]}"
        )
        raise ClipError(
            clip_id,
            paths[shortest],
            f"{what} (frames at {layout.FPS} fps: {listing}; at most {frame_tolerance} apart is normal); "
            f"re-export the clip's modalities from the same recording or {drop}",
        )
    n_frames = min(min(lengths.values()), max_frames)
    if n_frames < 1:
        raise ClipError(
            clip_id,
            paths[shortest],
            f"clip has {n_frames} usable frames (shorter than one frame at {layout.FPS} fps); {drop}",
        )
    n_samples = n_frames * audio_rate // layout.FPS
    return Clip(
        clip_id=clip_id,
        face=np.ascontiguousarray(face[:n_frames]),
        audio=np.ascontiguousarray(audio[:n_samples]),
        emotion=np.ascontiguousarray(emotion[:n_frames]),
        audio_rate=audio_rate,
        n_frames=n_frames,
    )
