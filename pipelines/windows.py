"""DVC stage ``windows``: cut train and val examples into memory-mappable training windows."""

from __future__ import annotations

from pathlib import Path

from pipelines.flows import StageTimer, run_stage
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.features import STATS_FILE, NormStats, check_features
from reactdiff.windows import build_split_windows, write_split_windows

FEATURES = Path("features")
OUT = Path("windows")
SPLITS = ("train", "val")


def main() -> None:
    timer = StageTimer("windows")
    params = load_params()
    check_features(FEATURES, SPLITS)  # before any work: never cut windows from a mixed features/
    stats = NormStats.load(FEATURES / STATS_FILE)
    summary = []
    with atomic.atomic_dir(OUT) as out:  # all splits or none: a failure keeps the previous windows/
        for split in SPLITS:
            windows = build_split_windows(FEATURES / split, stats, params.windows.size, params.windows.stride)
            if windows.meta["windows"] == 0:
                raise SystemExit(
                    f"[windows] split {split} yields no window of {params.windows.size} frames; "
                    "lower windows.size or check features/report.json"
                )
            write_split_windows(windows, out / split)
            summary.append(
                f"{split}: {windows.meta['windows']} windows from {windows.meta['examples']} examples"
            )
    timer.done(read=f"{FEATURES}/", wrote=f"{OUT}/ ({'; '.join(summary)})")


if __name__ == "__main__":
    run_stage(main, "windows")
