import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reactdiff import atomic


def test_atomic_path_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    atomic.write_json({"a": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{")
    assert atomic.json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_interrupted_parquet_write_is_never_visible(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"
    table = pa.table({"x": [1, 2, 3]})

    def crash(table, where, **kwargs):
        open(where, "wb").write(b"PAR1 truncated")
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_parquet(table, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    atomic.write_parquet(table, target)
    assert pq.read_table(target).column("x").to_pylist() == [1, 2, 3]


def test_atomic_dir_replaces_whole_folder(tmp_path):
    target = tmp_path / "corpus"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(ValueError):
        with atomic.atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("second")
            raise ValueError("generator failed")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    with atomic.atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_atomic_dir_survives_an_interrupt_and_cleans_up_after_a_killed_run(tmp_path):
    target = tmp_path / "features"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("complete")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C half way: the previous output stays
        with atomic.atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("half")
            raise KeyboardInterrupt
    assert (target / "a.txt").read_text() == "complete"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]
    # A run killed outright left its temporary folder; one killed mid-swap left only the old output.
    (tmp_path / ".features.abc123.tmp").mkdir()
    (tmp_path / ".features.abc123.tmp" / "a.txt").write_text("half")
    target.rename(tmp_path / ".features.old")
    with atomic.atomic_dir(target) as tmp:
        assert (target / "a.txt").read_text() == "complete"  # put back before the new run starts
        assert sorted(p.name for p in tmp_path.iterdir()) == [tmp.name, "features"]
        (tmp / "a.txt").write_text("new")
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


def test_arrow_file_is_memory_mappable(tmp_path):
    table = pa.table(
        {"v": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()), 2)}
    )
    atomic.write_arrow(table, tmp_path / "t.arrow")
    with pa.memory_map(str(tmp_path / "t.arrow")) as source:
        read = pa.ipc.open_file(source).read_all()
        values = read.column("v").chunk(0).flatten().to_numpy(zero_copy_only=True)
        assert values.tolist() == [1.0, 2.0, 3.0, 4.0]
