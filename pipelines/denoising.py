"""DVC stage ``denoising``: the trained denoiser's denoising curve against a linear denoiser.

Writes ``metrics/denoiser.json`` (per noise level: the mean squared error of the noisy input, of the
Wiener filter fitted on the train windows and of the trained EMA model, on validation windows; see
:mod:`reactdiff.denoising`), ``plots/denoiser.csv`` and ``plots/denoiser.png``, and logs them to the
training run in MLflow (metrics ``denoise_<estimate>_sigma_<sigma>``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pipelines import tracking
from pipelines.flows import StageTimer, run_stage
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.denoising import LinearDenoiser, denoising_curve
from reactdiff.devices import select_device
from reactdiff.render import plot_denoising_curve
from reactdiff.training import PRIOR_MAX_WINDOWS, evenly_spaced, load_denoiser
from reactdiff.windows import WindowDataset

WINDOWS = Path("windows")
MODEL = Path("models/teacher/reactdiff.pt")
METRICS = Path("metrics/denoiser.json")
TABLE = Path("plots/denoiser.csv")
FIGURE = Path("plots/denoiser.png")


def curve_csv(curve: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["sigma", "noisy", "linear", "model", "model_over_linear"])
    for row in curve:
        values = (row["sigma"], row["noisy"], row["linear"], row["model"], row["model"] / row["linear"])
        writer.writerow([f"{v:.6g}" for v in values])
    return buffer.getvalue()


def main() -> None:
    timer = StageTimer("denoising")
    params = load_params()
    device = select_device(params.train.device)
    model = load_denoiser(MODEL, device=device)
    history = model.config.speaker_history
    train = WindowDataset(WINDOWS / "train", params.windows.initial_past, speaker_history=history)
    val = WindowDataset(WINDOWS / "val", params.windows.initial_past, speaker_history=history)
    # The same train windows as the model's own prior is fitted on.
    linear = LinearDenoiser.fit(train.batch(evenly_spaced(len(train), PRIOR_MAX_WINDOWS)).listener)
    curve = denoising_curve(model, linear, val, seed=params.seed, device=device)

    rows = {f"sigma_{row['sigma']:g}": {k: row[k] for k in ("noisy", "linear", "model")} for row in curve}
    atomic.write_json(rows, METRICS)
    atomic.write_text(curve_csv(curve), TABLE)
    plot_denoising_curve(FIGURE, curve, title="Denoising on validation windows")

    import mlflow

    with tracking.start_run("train", run_id=tracking.read_run_id()):
        mlflow.log_metrics(
            {f"denoise_{k}_sigma_{name[6:]}": v for name, row in rows.items() for k, v in row.items()}
        )
        mlflow.log_artifact(str(TABLE))
        mlflow.log_artifact(str(FIGURE))
    worst = max(row["model"] / row["linear"] for row in curve if row["sigma"] <= 0.5)
    timer.done(
        read=f"{MODEL}, {WINDOWS}/train, {WINDOWS}/val",
        wrote=f"{METRICS} (model / linear at sigma <= 0.5: at most {worst:.2f}), {TABLE}, {FIGURE}",
    )


if __name__ == "__main__":
    run_stage(main, "denoising")
