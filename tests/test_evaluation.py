import numpy as np
import pyarrow as pa
import pytest

from pipelines.sample import reactions_table
from reactdiff import atomic
from reactdiff.corpus import CorpusError, Example, SplitIndex
from reactdiff.evaluation import (
    BASELINE_ORDER,
    METRIC_ORDER,
    baseline_reactions,
    generated_reactions,
    load_split,
    markdown_table,
    ordered_baselines,
    results_table,
    score,
)
from reactdiff.features import (
    EXAMPLES_FILE,
    FRAMES_FILE,
    NEIGHBOURS_FILE,
    ClipFeatures,
    examples_table,
    frames_table,
)
from reactdiff.realism import RealismConfig, train_realism_encoder

A = 4


def _split_dir(tmp_path, name, n_frames=(40, 42, 40, 41), seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"S/{name}{i // 2}/P{i % 2}/1" for i in range(4)]
    clips = [
        ClipFeatures(
            c, *(rng.normal(size=(n, d)).astype(np.float32) for d in (58, A)), np.zeros((n, 25), np.float32)
        )
        for c, n in zip(ids, n_frames, strict=True)
    ]
    dyads = [(ids[0], ids[1]), (ids[2], ids[3])]
    examples = [
        Example(k, *pair, f"S/{name}{k % 2}") for k, pair in enumerate(dyads + [d[::-1] for d in dyads])
    ]
    index = SplitIndex(tmp_path, name, dyads, examples, None)
    out = tmp_path / name
    atomic.write_parquet(frames_table(clips, "test", A), out / FRAMES_FILE)
    atomic.write_parquet(examples_table(index, set(ids), {}), out / EXAMPLES_FILE)
    neighbours = np.eye(4, dtype=bool) | np.eye(4, k=2, dtype=bool) | np.eye(4, k=-2, dtype=bool)
    np.save(out / NEIGHBOURS_FILE, neighbours)
    return out, {c.clip_id: c for c in clips}


def test_load_split_aligns_examples_and_cuts_to_shortest(tmp_path):
    out, clips = _split_dir(tmp_path, "test")
    split = load_split(out)
    assert split.frames == 40
    assert [e["example"] for e in split.examples] == [0, 1, 2, 3]
    np.testing.assert_array_equal(split.speaker[2], clips["S/test0/P1/1"].face[:40])
    np.testing.assert_array_equal(split.listener[2], clips["S/test0/P0/1"].face[:40])
    assert split.neighbours.shape == (4, 4) and split.neighbours[0, 2]


def test_generated_reactions_round_trip_and_missing_data(tmp_path):
    out, _ = _split_dir(tmp_path, "test")
    split = load_split(out)
    rng = np.random.default_rng(1)
    P = rng.normal(size=(4, 3, 40, 58)).astype(np.float32)
    tables = [reactions_table("s", e, P[i]) for i, e in reversed(list(enumerate(split.examples)))]
    atomic.write_parquet(pa.concat_tables(tables), tmp_path / "samples.parquet")
    np.testing.assert_array_equal(generated_reactions(tmp_path / "samples.parquet", split), P)
    atomic.write_parquet(pa.concat_tables(tables[1:]), tmp_path / "partial.parquet")
    with pytest.raises(CorpusError, match="no generated reactions for examples .*dvc repro sample"):
        generated_reactions(tmp_path / "partial.parquet", split)
    short = reactions_table("s", split.examples[0], P[0, :, :30])
    atomic.write_parquet(pa.concat_tables([short, *tables[:3]]), tmp_path / "short.parquet")
    with pytest.raises(CorpusError, match="some frames of some samples are missing; run the sample stage"):
        generated_reactions(tmp_path / "short.parquet", split)


def test_baselines_have_the_paper_semantics(tmp_path):
    test = load_split(_split_dir(tmp_path, "test")[0])
    train = load_split(_split_dir(tmp_path, "train", seed=5)[0])
    variants = baseline_reactions(test, train, samples=3, seed=0, segment=8)
    for P in variants.values():
        assert P.shape == (4, 3, 40, 58)
    np.testing.assert_array_equal(variants["GT"][:, 1], test.listener)
    np.testing.assert_array_equal(variants["Mirror"][:, 2], test.speaker)
    assert not np.allclose(variants["Random"][:, 0], variants["Random"][:, 1])
    np.testing.assert_array_equal(variants["NN motion"][:, 0], variants["NN motion"][:, 2])
    assert list(variants) == list(BASELINE_ORDER)
    # Appropriate real: A(0) = A(2) = {0, 2}, A(1) = A(3) = {1, 3} (the split's neighbour matrix); M = 3 > 2,
    # so both members of A(k) are drawn and one of them twice
    real = variants["Appropriate real"]
    for k in range(4):
        drawn = [next(j for j in range(4) if np.array_equal(real[k, i], test.listener[j])) for i in range(3)]
        assert set(drawn) == set(np.flatnonzero(test.neighbours[k]).tolist()) == {k % 2, k % 2 + 2}
    again = baseline_reactions(test, train, samples=3, seed=0, segment=8)["Appropriate real"]
    np.testing.assert_array_equal(again, real)


def test_ordered_baselines_puts_the_table_rows_in_order():
    stored = {name: {"all": {"FRCorr": 1.0}} for name in sorted([*BASELINE_ORDER, "Zeta", "Alpha"])}
    ordered = ordered_baselines(stored)
    assert list(ordered) == [*BASELINE_ORDER, "Alpha", "Zeta"]
    assert list(ordered_baselines({"Random": {}, "Appropriate real": {}, "GT": {}})) == [
        "GT",
        "Random",
        "Appropriate real",
    ]
    md = markdown_table(results_table({"ReactDiff": {"all": {"FRCorr": 2.0}}, **ordered}))
    rows = [line.split(" | ")[0].lstrip("| ") for line in md.splitlines()[2:]]
    assert rows == ["ReactDiff", *BASELINE_ORDER, "Alpha", "Zeta"]


def test_results_table_and_markdown():
    results = {
        "ReactDiff": {"all": {"FRCorr": 1.5, "FRDist": 90.0, "FRSyn": 40.0}, "pose": {"FRCorr": 0.5}},
        "GT": {"all": {"FRCorr": 10.0, "FRDist": 0.0, "FRSyn": float("nan")}},
    }
    frame = results_table(results)
    assert list(frame.columns[:5]) == ["variant", "subset", "FRCorr", "FRDist", "FRSyn"]
    assert len(frame) == 3
    md = markdown_table(frame, "all")
    assert "FRCorr ↑" in md and "FRDist ↓" in md
    assert "| GT | 10 | 0 | n/a |" in md


def test_score_adds_fd_learned_only_with_a_realism_encoder(tmp_path):
    split = load_split(_split_dir(tmp_path, "test", n_frames=(110, 110, 110, 110))[0])
    P = np.stack([split.listener[::-1]] * 2, axis=1)  # [4, 2, 110, 58]
    plain = score(P, split, seed=0)
    assert "FD_learned" not in plain["all"] and "FD_stats" in plain["all"]
    config = RealismConfig(window=50, embedding_dim=4, channels=4, steps=2, batch_size=2)
    encoder = train_realism_encoder(split.listener, config, device="cpu")
    learned = score(P, split, seed=0, realism_encoder=encoder)
    for subset in ("all", "expression", "pose"):
        # P is the real reactions themselves (twice): closer to them than a random half is to the other
        assert 0 <= learned[subset]["FD_learned"] < learned[subset]["FD_learned_real_floor"]
        assert learned[subset]["FD_stats"] == plain[subset]["FD_stats"]  # nothing else changes
        # the headline metrics lead (the metrics file and dvc exp show keep this order), the rest sorted
        names = list(learned[subset])
        assert names[: len(METRIC_ORDER)] == list(METRIC_ORDER)
        assert names[len(METRIC_ORDER) :] == sorted(names[len(METRIC_ORDER) :])
    table = results_table({"ReactDiff": learned})
    assert list(table.columns[8:11]) == ["FD_stats", "FD_dynamics", "FD_learned"]
    assert "FD_learned ↓" in markdown_table(table, "pose")
    short = train_realism_encoder(split.listener, RealismConfig(**{**config.__dict__, "window": 20}))
    with pytest.raises(ValueError, match="set realism.window: 50"):
        score(P, split, seed=0, realism_encoder=short)
