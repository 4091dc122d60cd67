"""Checkpoint loading: every way a file goes wrong is named, with the file and the fix, and nothing runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from reactdiff.checkpoints import CheckpointError, load_checkpoint

FORMAT = "reactdiff.test/1"
FIX = "run `dvc repro train`"


class Payload:
    """A pickled object whose unpickling would write a marker file: what a booby-trapped checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "ran"))


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "weights": torch.arange(4096, dtype=torch.float32)}, path)
    return path


def _message(path: Path) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, FORMAT, FIX)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and text.endswith(FIX) and "weights_only" not in text
    return text


def test_a_good_checkpoint_loads(good):
    assert torch.equal(load_checkpoint(good, FORMAT, FIX)["weights"], torch.arange(4096.0))


def test_missing_truncated_and_foreign_files_are_told_apart(tmp_path, good):
    assert "checkpoint not found" in _message(tmp_path / "absent.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert f"is truncated ({cut.stat().st_size} bytes" in _message(cut)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "is not a torch checkpoint (16 bytes of another kind of file)" in _message(text)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(pickle.dumps({"format": FORMAT}))
    assert "is a pickle file, not a torch archive" in _message(legacy)
    other = tmp_path / "other.pt"
    torch.save({"format": "someone.else/2"}, other)
    assert "expected a reactdiff.test/1 checkpoint, found format 'someone.else/2'" in _message(other)
    torch.save([1, 2], other)
    assert "checkpoint, found list;" in _message(other)


def test_a_damaged_archive_is_named_damaged(tmp_path, good):
    data = bytearray(good.read_bytes())
    pickled = data.index(b"\x80\x02}")  # the stored dict's pickle stream (protocol 2, then "{")
    data[pickled + 2] = 0xFF  # no such opcode: unpickling fails, and the entry's CRC no longer matches
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    assert "is damaged (its entry 'model/data.pkl' fails its checksum)" in _message(damaged)


def test_a_checkpoint_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    marker = tmp_path / "marker"
    trapped = tmp_path / "trapped.pt"
    torch.save({"format": FORMAT, "extra": Payload(marker)}, trapped)
    assert not marker.exists()
    assert "holds Python objects beyond tensors and plain values" in _message(trapped)
    assert not marker.exists()
