"""Constants and path conventions of the REACT2024 corpus layout.

The real corpus and the synthetic sample share this layout exactly, so one reader serves both::

    <root>/<split>.csv                                   rows: index, speaker clip, listener clip
    <root>/neighbour_emotion_<split>.npy                 bool [2 * rows, 2 * rows]
    <root>/<split>/Audio_files/<site>/<session>/<person>/<clip>.wav
    <root>/<split>/3D_FV_files/<site>/<session>/<person>/<clip>.npy   float [751, 58]
    <root>/<split>/Emotion/<site>/<session>/<person>/<clip>.csv       25 columns
    <root>/<split>/Video_files/<site>/<session>/<person>/<clip>.mp4  (optional, unused)

A clip id is the relative path ``<site>/<session>/<person>/<clip>`` without extension.
Each row of ``<split>.csv`` is a dyad; the corpus doubles the rows with roles swapped, so example
``k < rows`` has the row's first clip as speaker and example ``k + rows`` has the second clip as speaker.
The neighbour matrix is indexed by those doubled examples: ``neighbour[k, j]`` is true when the listener
reaction of example ``j`` is an appropriate reaction to the speaker of example ``k``.
"""

from __future__ import annotations

from pathlib import Path

FPS = 25
CLIP_FRAMES = 750  # frames used per clip; the 3DMM files carry 751 rows
FILE_FRAMES = 751
N_COEFFS = 58
N_EXPRESSION = 52
EXPRESSION = slice(0, 52)
ROTATION = slice(52, 55)
TRANSLATION = slice(55, 58)
POSE = slice(52, 58)
MODEL_SAMPLE_RATE = 16_000  # audio encoders work at 16 kHz
CORPUS_SAMPLE_RATE = 44_100  # what the real corpus ships

SPLITS = ("train", "val", "test")
MODALITY_DIRS = {
    "audio": ("Audio_files", ".wav"),
    "face": ("3D_FV_files", ".npy"),
    "emotion": ("Emotion", ".csv"),
    "video": ("Video_files", ".mp4"),
}
REQUIRED_MODALITIES = ("audio", "face", "emotion")

AU_COLUMNS = [
    "AU1", "AU2", "AU4", "AU6", "AU7", "AU9", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU23", "AU24", "AU25", "AU26",
]  # fmt: skip
EXPRESSION_COLUMNS = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt"]
EMOTION_COLUMNS = AU_COLUMNS + ["Valence", "Arousal"] + EXPRESSION_COLUMNS  # 25 columns


def split_list_path(root: Path, split: str) -> Path:
    return Path(root) / f"{split}.csv"


def neighbour_path(root: Path, split: str) -> Path:
    return Path(root) / f"neighbour_emotion_{split}.npy"


def clip_path(root: Path, split: str, modality: str, clip_id: str) -> Path:
    folder, ext = MODALITY_DIRS[modality]
    return Path(root) / split / folder / f"{clip_id}{ext}"


def session_of(clip_id: str) -> str:
    """``site/session/person/clip`` -> ``site/session``."""
    parts = clip_id.split("/")
    if len(parts) != 4:
        raise ValueError(f"clip id {clip_id!r} is not <site>/<session>/<person>/<clip>")
    return "/".join(parts[:2])
