"""DVC stage ``render``: videos and plots of the speaker, the real and the M generated listeners.

For the first ``render.sessions`` sessions of the sampled split (both directions of each dyad), writes
``renders/<example>.mp4`` (speaker on the left with its voice, real listener and M generated reactions
in a grid, 25 fps) and ``plots/coefficients/<example>.png`` (chosen coefficients over time), and
``plots/metrics.png`` (bar charts of the evaluation table). Plots and videos are logged as MLflow
artifacts of the sampling run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines import tracking
from pipelines.flows import StageTimer
from reactdiff.config import load_params
from reactdiff.corpus import read_clip
from reactdiff.evaluation import generated_reactions, load_split
from reactdiff.render import plot_coefficients, plot_metric_bars, write_reaction_video

FEATURES = Path("features")
SAMPLES = Path("samples")
REPORT = Path("reports/evaluate.csv")
VIDEOS = Path("renders")
PLOTS = Path("plots/coefficients")
BARS = Path("plots/metrics.png")
BAR_METRICS = ["FRCorr", "FRDist", "FRDiv", "FRVar", "FRSyn"]


def example_name(example: dict) -> str:
    return f"{example['example']:04d}_{example['speaker'].replace('/', '_')}"


def main() -> None:
    timer = StageTimer("render")
    params = load_params()
    cfg = params.render
    split = load_split(FEATURES / params.sample.split)
    P = generated_reactions(SAMPLES / f"{params.sample.split}.parquet", split)
    sessions = sorted({e["session"] for e in split.examples})[: cfg.sessions]
    VIDEOS.mkdir(parents=True, exist_ok=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    written = []
    for k, example in enumerate(split.examples):
        if example["session"] not in sessions:
            continue
        name = example_name(example)
        clip = read_clip(params.data_root(), params.sample.split, example["speaker"])
        audio = clip.audio[: split.frames * clip.audio_rate // 25]
        write_reaction_video(
            VIDEOS / f"{name}.mp4",
            split.speaker[k],
            split.listener[k],
            P[k],
            audio=audio,
            audio_rate=clip.audio_rate,
            renderer=cfg.renderer,
            tile=cfg.tile,
        )
        plot_coefficients(
            PLOTS / f"{name}.png", split.speaker[k], split.listener[k], P[k], dims=cfg.dims, title=name
        )
        written.append(name)
    table = pd.read_csv(REPORT)
    table = table[table["subset"] == "all"].set_index("variant")
    metrics = [m for m in BAR_METRICS if m in table.columns]
    plot_metric_bars(
        BARS,
        {
            v: {m: float(table.loc[v, m]) for m in metrics if np.isfinite(table.loc[v, m])}
            for v in table.index
        },
        metrics,
        lower_is_better=("FRDist", "FRSyn"),
        title="REACT metrics, all coefficients",
    )

    import mlflow

    with tracking.start_run("render", run_id=tracking.read_run_id(SAMPLES / "mlflow_run.json")):
        mlflow.log_artifacts(str(PLOTS), artifact_path="plots/coefficients")
        mlflow.log_artifact(str(BARS), artifact_path="plots")
        mlflow.log_artifacts(str(VIDEOS), artifact_path="videos")
    timer.done(
        read=f"{SAMPLES}/, {FEATURES}/, {params.data_root()} (audio)",
        wrote=f"{len(written)} videos in {VIDEOS}/, plots in {PLOTS}/ and {BARS}",
    )


if __name__ == "__main__":
    main()
