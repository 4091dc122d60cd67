"""DVC stage ``render``: videos and plots of the speaker, the real and the M generated listeners.

For the first ``render.sessions`` sessions of the sampled split (both directions of each dyad), writes
``renders/<example>.mp4`` (speaker on the left with its voice, real listener and M generated reactions
in a grid, 25 fps) and ``plots/coefficients/<example>.png`` (chosen coefficients over time), and
``plots/metrics.png`` (bar charts of the evaluation table). ``renders/`` and ``plots/coefficients/``
are written into fresh hidden folders swapped in at the end, so a failed or interrupted run leaves the
previous ones. Plots and videos are logged as MLflow artifacts of the sampling run. Each example is
one Prefect task (``render.runner``, ``render.workers``): drawing is Python holding the GIL, so the
default runner is processes, one video per core at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NONE

from pipelines import tracking
from pipelines.flows import StageTimer, gather, make_task_runner, run_stage, worker_count
from reactdiff import atomic
from reactdiff.config import RenderParams, load_params
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


@task(name="render-example", cache_policy=NONE)
def render_example(
    name: str, speaker: np.ndarray, listener: np.ndarray, generated: np.ndarray, audio: np.ndarray,
    audio_rate: int, cfg: RenderParams, videos: str, plots: str,
) -> str:  # fmt: skip
    """One example's video and coefficient plot (a task: examples render in parallel)."""
    write_reaction_video(
        Path(videos) / f"{name}.mp4", speaker, listener, generated, audio=audio, audio_rate=audio_rate,
        renderer=cfg.renderer, tile=cfg.tile, encoder_threads=1,
    )  # fmt: skip
    plot_coefficients(Path(plots) / f"{name}.png", speaker, listener, generated, dims=cfg.dims, title=name)
    return name


@flow(name="render", log_prints=True)
def render_flow(jobs: list[dict], cfg: RenderParams, videos: str, plots: str) -> list[str]:
    futures = [render_example.submit(**job, cfg=cfg, videos=videos, plots=plots) for job in jobs]
    return gather(futures, desc="render")


def main() -> None:
    timer = StageTimer("render")
    params = load_params()
    cfg = params.render
    split = load_split(FEATURES / params.sample.split)
    P = generated_reactions(SAMPLES / f"{params.sample.split}.parquet", split)
    sessions = sorted({e["session"] for e in split.examples})[: cfg.sessions]
    jobs = []
    for k, example in enumerate(split.examples):
        if example["session"] not in sessions:
            continue
        clip = read_clip(params.data_root(), params.sample.split, example["speaker"])
        jobs.append(
            {
                "name": example_name(example),
                "speaker": split.speaker[k],
                "listener": split.listener[k],
                "generated": P[k],
                "audio": clip.audio[: split.frames * clip.audio_rate // 25],
                "audio_rate": clip.audio_rate,
            }
        )
    written = []
    with atomic.atomic_dir(VIDEOS) as videos, atomic.atomic_dir(PLOTS) as plots:
        if jobs:
            workers = min(worker_count(cfg.workers), len(jobs))
            runner = make_task_runner(cfg.runner, workers, cfg.dask_address)
            written = render_flow.with_options(task_runner=runner)(jobs, cfg, str(videos), str(plots))
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
    # Run the module under its import name, not as __main__: a Dask worker (another process, another
    # __main__) finds the tasks and their cached helpers by that name when it unpickles them.
    from pipelines import render as stage

    run_stage(stage.main, "render")
