"""Reading the project's checkpoints safely, with errors that name the file and say what is wrong with it.

Every checkpoint the project writes is a ``torch.save`` of a dict of tensors and plain values with a
``format`` string, so it loads with ``torch.load(weights_only=True)``: a file that needs more (a pickled
class, a function) is refused and nothing in it runs. Torch's own messages for the ways a file goes wrong
do not name the file and advise loading it with the unsafe flag; :func:`load_checkpoint` tells instead
which of these it is:

- missing: not there (train it first);
- truncated: a torch archive whose end is missing (a copy or a write that was cut short);
- not a checkpoint: not a torch archive at all, or one without the expected ``format``;
- refused: a torch archive holding Python objects beyond tensors and plain values, which could run code
  when unpickled; a checkpoint of this project never does, so it was not made by it.

Each case says how to get a good file; none suggests loading it anyway.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from reactdiff.errors import UserError

__all__ = ["CheckpointError", "load_checkpoint"]


class CheckpointError(ValueError, UserError):
    """A checkpoint that cannot be used; the message names the file, what is wrong and the fix."""


def _diagnose(path: Path) -> str:
    """Why ``torch.load(weights_only=True)`` failed on ``path``, in the user's terms."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(4)
        size = path.stat().st_size
        if head == b"PK\x03\x04":  # starts as an archive, but its directory at the end is missing
            return f"is truncated ({size} bytes: the end of the archive is missing)"
        if head[:1] == b"\x80":  # a pickle stream: torch's legacy format, or plain pickle
            return "is a pickle file, not a torch archive of tensors; it was not written by this project"
        return f"is not a torch checkpoint ({size} bytes of another kind of file)"
    if damaged is not None:
        return f"is damaged (its entry {damaged!r} fails its checksum): copy or regenerate it"
    return "holds Python objects beyond tensors and plain values (they could run code when loaded); refused"


def load_checkpoint(
    path: Path | str,
    expected_format: str | int,
    fix: str,
    map_location: str | torch.device = "cpu",
    kind: str = "",
) -> dict[str, Any]:
    """The dict saved at ``path`` whose ``format`` is ``expected_format``, else :class:`CheckpointError`.

    ``fix``: how the user gets a good file (e.g. "run `dvc repro train`"), appended to every message;
    ``kind``: what the checkpoint is, in words ("ReactDiff training"), for the message on a wrong format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; {fix}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as err:
        # Deliberately not torch's text: it advises weights_only=False, the unsafe way round.
        raise CheckpointError(f"{path}: {_diagnose(path)}; {fix}") from err
    if not isinstance(payload, dict) or payload.get("format") != expected_format:
        found = f"format {payload.get('format')!r}" if isinstance(payload, dict) else type(payload).__name__
        what = f"{kind} checkpoint (format {expected_format!r})" if kind else f"{expected_format} checkpoint"
        raise CheckpointError(f"{path}: expected a {what}, found {found}; {fix}")
    return payload
