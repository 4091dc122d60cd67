"""DVC stage ``features``: every clip of every split to Parquet, one Prefect task per session.

Reads ``data.root`` (REACT2024 layout), writes ``features/<split>/{frames,examples}.parquet``,
``features/norm_stats.json`` (train split only), ``features/quarantine.csv`` and ``features/report.json``.
A bad clip is quarantined with its reason and the rest goes on; the stage fails only when a split is
left with nothing usable, after writing the quarantine report.

Every split list and neighbour matrix is read and checked before any clip is extracted, and all the
problems found are reported at once. The outputs are written into a fresh hidden folder that replaces
``features/`` as a whole at the end (:func:`reactdiff.atomic.atomic_dir`): an error or Ctrl-C half way
leaves the previous ``features/`` exactly as it was, never a mix of old and new files.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NONE

from pipelines.flows import StageTimer, gather, make_task_runner, run_stage, worker_count
from reactdiff import atomic, layout
from reactdiff.audio import build_encoder
from reactdiff.config import FeaturesConfig, load_params
from reactdiff.corpus import CorpusError, SplitIndex, read_split
from reactdiff.features import (
    EXAMPLES_FILE,
    FRAMES_FILE,
    NEIGHBOURS_FILE,
    QUARANTINE_FILE,
    REPORT_FILE,
    STATS_FILE,
    NormStats,
    Rejection,
    SessionResult,
    examples_table,
    extract_session,
    frames_table,
    split_digests,
)

OUT = Path("features")


def encoder_kwargs(cfg: FeaturesConfig) -> tuple[str, tuple]:
    if cfg.encoder == "wav2vec2":
        if not cfg.wav2vec2_path:
            raise SystemExit(
                "params.yaml: features.encoder is 'wav2vec2' but features.wav2vec2_path is empty; set it "
                "to a local folder holding a save_pretrained wav2vec2 model (or a cached hub name)"
            )
        kwargs = {
            "model_path": cfg.wav2vec2_path,
            "layer": cfg.wav2vec2_layer,
            "left_context_s": cfg.left_context_s,
            "chunk_frames": cfg.wav2vec2_chunk_frames,
        }
        return cfg.encoder, tuple(sorted(kwargs.items()))
    return cfg.encoder, ()


@lru_cache(maxsize=2)
def cached_encoder(name: str, kwargs: tuple):
    """One encoder per worker process (a wav2vec2 model is loaded once, not once per session)."""
    return build_encoder(name, **dict(kwargs))


@task(name="extract-session", cache_policy=NONE)
def extract_session_task(
    root: str, split: str, session: str, clip_ids: list[str], encoder: tuple, cfg: FeaturesConfig
) -> SessionResult:
    return extract_session(
        Path(root),
        split,
        session,
        clip_ids,
        cached_encoder(*encoder),
        max_frames=cfg.max_frames,
        frame_tolerance=cfg.frame_tolerance,
    )


def quarantine_csv(rejections: list[Rejection]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["split", "clip", "file", "reason"])
    for r in sorted(rejections, key=lambda r: (r.split, r.clip_id)):
        writer.writerow([r.split, r.clip_id, r.path, r.reason])
    return buffer.getvalue()


def read_splits(root: Path, splits: list[str]) -> dict[str, SplitIndex]:
    """Every split's list and neighbour matrix, checked before any work; all problems in one error."""
    indexes, problems = {}, []
    for split in splits:
        try:
            indexes[split] = read_split(root, split)
        except CorpusError as err:
            problems.append(str(err))
    if problems:
        raise CorpusError("\n".join(problems), root)
    if "train" not in indexes:
        raise CorpusError("features: normalisation statistics need the train split in data.splits", root)
    return indexes


@flow(name="features", log_prints=True)
def features_flow(root: Path, splits: list[str], cfg: FeaturesConfig, out: Path) -> dict:
    """Extract every split into ``out``; the report lists the splits left with no usable example."""
    encoder_spec = encoder_kwargs(cfg)
    encoder = cached_encoder(*encoder_spec)
    rejections: list[Rejection] = []
    report: dict = {"encoder": encoder.name, "audio_dim": encoder.dim, "splits": {}}
    empty_splits = []
    train_stats = None
    for split in splits:
        index = read_split(root, split)
        by_session: dict[str, list[str]] = defaultdict(list)
        for clip_id in index.clips():
            by_session[layout.session_of(clip_id)].append(clip_id)
        futures = [
            extract_session_task.submit(str(root), split, session, clips, encoder_spec, cfg)
            for session, clips in sorted(by_session.items())
        ]
        results: list[SessionResult] = gather(futures, desc=f"features {split}")
        results.sort(key=lambda r: r.session)  # completion order must not change the output
        clips = [c for r in results for c in r.clips]
        split_rejections = [x for r in results for x in r.rejected]
        rejections.extend(split_rejections)
        table = frames_table(clips, encoder.name, encoder.dim)
        examples = examples_table(
            index, {c.clip_id for c in clips}, {x.clip_id: x.reason for x in split_rejections}
        )
        atomic.write_parquet(table, out / split / FRAMES_FILE)
        atomic.write_parquet(examples, out / split / EXAMPLES_FILE)
        if index.neighbours is not None:  # later stages read appropriateness from here, not from the corpus
            with atomic.atomic_path(out / split / NEIGHBOURS_FILE) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, index.neighbours.astype(bool))
        usable = int(np.sum(examples.column("usable").to_numpy(zero_copy_only=False)))
        found = len(index.clips())
        report["splits"][split] = {
            "clips_found": found,
            "clips_written": len(clips),
            "clips_quarantined": len(split_rejections),
            "examples": len(index.examples),
            "examples_usable": usable,
            "frames": table.num_rows,
            "sha256": split_digests(out / split),  # readers check these (check_features)
        }
        # Every clip found is either written or quarantined: nothing disappears silently.
        if found != len(clips) + len(split_rejections):
            raise RuntimeError(
                f"features: clip counts do not reconcile for {split}: {report['splits'][split]}"
            )
        if usable == 0:
            empty_splits.append(split)
        if split == "train" and clips:
            train_stats = NormStats.from_arrays(
                np.concatenate([c.face for c in clips]), np.concatenate([c.audio for c in clips])
            )
    atomic.write_text(quarantine_csv(rejections), out / QUARANTINE_FILE)
    atomic.write_json(report, out / REPORT_FILE)
    if train_stats is not None:
        atomic.write_json(train_stats.to_json(), out / STATS_FILE)
    for r in rejections:
        print(f"quarantined {r.path}: {r.reason}")
    report["empty_splits"] = empty_splits
    return report


def extract_features(root: Path, splits: list[str], cfg: FeaturesConfig, out: Path = OUT) -> dict:
    """Check every split, extract them all into a fresh folder, swap it in as ``out`` (the stage's work).

    Raises :class:`CorpusError` (nothing extracted, ``out`` untouched) for bad split lists or neighbour
    matrices, and ``SystemExit`` after the swap when a split has no usable example left: the quarantine
    report in ``out`` then says which files to fix.
    """
    read_splits(root, splits)
    runner = make_task_runner(cfg.runner, cfg.workers, cfg.dask_address)
    with atomic.atomic_dir(out) as tmp:
        report = features_flow.with_options(task_runner=runner)(root, splits, cfg, tmp)
    if report["empty_splits"]:
        raise SystemExit(
            f"[features] no usable example left in split(s) {', '.join(report['empty_splits'])} of {root}; "
            f"see {out / QUARANTINE_FILE} for each rejected file and its reason, fix or replace those files"
        )
    return report


def main() -> None:
    timer = StageTimer("features")
    params = load_params()
    root = params.data_root()
    cfg = params.features
    print(f"[features] {root} with encoder {cfg.encoder}, {worker_count(cfg.workers)} {cfg.runner} workers")
    report = extract_features(root, list(params.data.splits), cfg)
    counts = ", ".join(
        f"{s}: {v['clips_written']}/{v['clips_found']} clips, {v['clips_quarantined']} quarantined"
        for s, v in report["splits"].items()
    )
    timer.done(read=f"{root} ({counts})", wrote=f"{OUT}/")


if __name__ == "__main__":
    # Run the module under its import name, not as __main__: a Dask worker (another process, another
    # __main__) finds the tasks and their cached helpers by that name when it unpickles them.
    from pipelines import features as stage

    run_stage(stage.main, "features")
