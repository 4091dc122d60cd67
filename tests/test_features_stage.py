"""The `features` stage on a small corpus with one clip of each kind of bad input."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.features import extract_features
from reactdiff import layout
from reactdiff.config import FeaturesConfig
from reactdiff.corpus import CorpusError, read_clip, read_split
from reactdiff.features import NormStats, check_features, read_frames
from reactdiff.synthetic import SyntheticSpec, generate_corpus

SPEC = SyntheticSpec(
    seed=1, frames=100, sample_rate=16_000, families={"train": 3, "val": 1, "test": 1}, sessions_per_family=4
)


def _truncate_wav(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header still claims the full length
    return "audio is shorter"


def _garbage_wav(path: Path) -> str:
    path.write_bytes(b"this is not a RIFF file at all")
    return "audio"


def _wrong_shape(path: Path) -> str:
    np.save(path, np.load(path)[:, :57])
    return "58"


def _nan(path: Path) -> str:
    face = np.load(path)
    face[10, 3] = np.nan
    np.save(path, face)
    return "NaN"


def _inf(path: Path) -> str:
    face = np.load(path)
    face[20, 55] = np.inf
    np.save(path, face)
    return "inf"


def _length_gap(path: Path) -> str:
    np.save(path, np.load(path)[:60])
    return "60"


def _malformed_csv(path: Path) -> str:
    path.write_text("AU1,AU2\nnot,numbers\n")
    return "column"


def _missing(path: Path) -> str:
    path.unlink()
    return "missing"


CORRUPTIONS = [
    ("audio", _truncate_wav),
    ("audio", _garbage_wav),
    ("face", _wrong_shape),
    ("face", _nan),
    ("face", _inf),
    ("face", _length_gap),
    ("emotion", _malformed_csv),
    ("audio", _missing),
]


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("features") / "corpus"
    generate_corpus(root, SPEC)
    index = read_split(root, "train")
    # One bad clip per dyad (the first person), so each corruption costs exactly two examples.
    expected = {}
    for (clip_id, _), (modality, corrupt) in zip(index.dyads[: len(CORRUPTIONS)], CORRUPTIONS, strict=True):
        path = layout.clip_path(root, "train", modality, clip_id)
        expected[clip_id] = (str(path), corrupt(path))
    return root, expected


@pytest.fixture(scope="module")
def stage_output(corrupted, tmp_path_factory, prefect_backend):
    root, _ = corrupted
    out = tmp_path_factory.mktemp("out") / "features"
    report = extract_features(root, ["train", "val", "test"], FeaturesConfig(workers=2), out=out)
    return out, report


def test_every_bad_clip_is_quarantined_with_file_and_reason(corrupted, stage_output):
    _, expected = corrupted
    out, _ = stage_output
    with open(out / "quarantine.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["clip"] for r in rows} == set(expected)
    for row in rows:
        path, reason_fragment = expected[row["clip"]]
        assert row["split"] == "train"
        assert row["file"] == path, row
        assert reason_fragment.lower() in row["reason"].lower(), row


def test_counts_reconcile_and_nothing_good_is_lost(corrupted, stage_output):
    root, expected = corrupted
    out, report = stage_output
    train = report["splits"]["train"]
    assert train["clips_found"] == 24
    assert train["clips_quarantined"] == len(expected) == 8
    assert train["clips_written"] == 16
    assert train["examples_usable"] == 24 - 2 * 8
    for split in ("val", "test"):
        assert report["splits"][split]["clips_quarantined"] == 0
        assert report["splits"][split]["examples_usable"] == 8
    frames = read_frames(out / "train" / "frames.parquet")
    assert set(frames).isdisjoint(expected)
    good = next(iter(frames))
    clip = read_clip(root, "train", good)
    np.testing.assert_array_equal(frames[good].face, clip.face)
    np.testing.assert_array_equal(frames[good].emotion, clip.emotion)
    assert frames[good].audio.shape == (clip.n_frames, report["audio_dim"])
    examples = pq.read_table(out / "train" / "examples.parquet").to_pylist()
    for ex in examples:
        bad = [c for c in (ex["speaker"], ex["listener"]) if c in expected]
        assert ex["usable"] == (not bad)
        for c in bad:
            assert c in ex["reason"]
    stats = NormStats.load(out / "norm_stats.json")
    assert stats.frames == 16 * (SPEC.frames + 1)  # files carry frames + 1 rows, like the real 751
    assert stats.face_mean.shape == (58,)


def test_stage_fails_clearly_only_when_nothing_usable_remains(tmp_path, corrupted, prefect_backend):
    root, _ = corrupted
    broken = tmp_path / "corpus"
    shutil.copytree(root, broken)
    for clip_id in read_split(broken, "val").clips():
        layout.clip_path(broken, "val", "face", clip_id).unlink()
    out = tmp_path / "features"
    with pytest.raises(SystemExit) as err:
        extract_features(broken, ["train", "val"], FeaturesConfig(workers=2), out=out)
    message = str(err.value)
    assert "val" in message and "quarantine.csv" in message
    with open(out / "quarantine.csv") as f:  # the report was written before failing
        assert sum(1 for r in csv.DictReader(f) if r["split"] == "val") == 8


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_output(tmp_path, stage_output) -> tuple[Path, dict[str, bytes]]:
    """A complete earlier ``features/`` in a folder of its own, and its bytes."""
    out = tmp_path / "run" / "features"
    shutil.copytree(stage_output[0], out)
    return out, _snapshot(out)


def test_bad_split_files_are_all_reported_before_any_work(tmp_path, corrupted, previous_output):
    root, _ = corrupted
    broken = tmp_path / "corpus"
    shutil.copytree(root, broken)
    split_list = layout.split_list_path(broken, "train")
    lines = split_list.read_text().splitlines()
    split_list.write_text(
        "".join(",".join(line.split(",")[:-1]) + "\n" for line in lines)
    )  # no listener_path
    np.save(layout.neighbour_path(broken, "val"), np.ones((3, 5), bool))  # not square
    out, before = previous_output
    with pytest.raises(CorpusError) as err:
        extract_features(broken, ["train", "val", "test"], FeaturesConfig(workers=2), out=out)
    message = str(err.value)
    assert str(split_list) in message and str(layout.neighbour_path(broken, "val")) in message
    assert _snapshot(out) == before  # nothing re-extracted, nothing mixed
    assert sorted(p.name for p in out.parent.iterdir()) == ["features"]  # no stray folder or file


def test_a_run_that_fails_half_way_leaves_the_previous_output(corrupted, previous_output, monkeypatch):
    import pipelines.features as stage

    root, _ = corrupted
    out, before = previous_output
    tables = []

    def fail_on_the_second_split(*args, **kwargs):
        if tables:
            raise RuntimeError("disk full")
        tables.append(1)
        return real(*args, **kwargs)

    real = stage.frames_table
    monkeypatch.setattr(stage, "frames_table", fail_on_the_second_split)
    with pytest.raises(RuntimeError, match="disk full"):
        extract_features(root, ["train", "val", "test"], FeaturesConfig(workers=2), out=out)
    assert _snapshot(out) == before  # the first split's new frames never reached features/
    assert sorted(p.name for p in out.parent.iterdir()) == ["features"]


def test_a_features_folder_mixing_two_runs_is_refused_by_its_readers(previous_output):
    out, _ = previous_output
    check_features(out, ["train", "val", "test"])  # as written: one run
    mixed = out / "val" / "frames.parquet"
    shutil.copy(out / "test" / "frames.parquet", mixed)  # a file of another run (here: another split)
    (out / "test" / "examples.parquet").unlink()
    with pytest.raises(CorpusError) as err:
        check_features(out, ["train", "val", "test"])
    lines = str(err.value).splitlines()
    assert lines[0].startswith(f"{mixed}: not the file {out / 'report.json'} was written with")
    assert lines[1].startswith(f"{out / 'test' / 'examples.parquet'}: missing;")
    assert len(lines) == 2 and all(line.endswith("`python -m pipelines.features`)") for line in lines)
