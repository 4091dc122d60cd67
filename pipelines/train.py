"""DVC stage ``train``: train the ReactDiff denoiser on the ``windows`` output and track it in MLflow.

    python -m pipelines.train                                  # one process (device chosen automatically)
    torchrun --nproc_per_node 2 -m pipelines.train             # DistributedDataParallel, same outputs

Writes ``models/teacher/reactdiff.pt`` (EMA weights for sampling, plus the full training state),
``models/teacher/mlflow_run.json`` (the run the later stages log into), ``metrics/train.json`` and
``plots/train_loss.csv``. An interrupted run resumes from ``checkpoints/<fingerprint>.pt`` (outside
DVC's outputs, which DVC clears before a stage runs); the fingerprint covers every setting that
changes the training trajectory, so a run with other params never resumes from it.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import torch

from pipelines import tracking
from pipelines.flows import StageTimer, run_stage
from reactdiff import atomic
from reactdiff.config import Params, load_params
from reactdiff.losses import LossConfig
from reactdiff.training import TrainConfig, config_fingerprint, dist_info, train
from reactdiff.windows import WindowDataset

WINDOWS = Path("windows")
SCRATCH = Path("checkpoints")
MODEL = Path("models/teacher/reactdiff.pt")
METRICS = Path("metrics/train.json")
PLOT = Path("plots/train_loss.csv")
ARTIFACT_LIMIT_BYTES = 200 * 2**20  # larger checkpoints are referenced by path, not copied into MLflow


def train_config(params: Params) -> TrainConfig:
    """The library's :class:`TrainConfig` from the validated params, field for field by name.

    ``train.*`` keys are TrainConfig fields, except the loss's (``use_fbk``, ``use_fac``,
    ``fbk_last_steps``, ``cfg_drop_prob``, and ``fbk_schedule_steps``, the loss's ``sampling_steps``);
    ``model.*`` other than ``preset`` are network overrides. A key added to params.yaml and not to the
    library fails here, by name, instead of being dropped.
    """
    train = params.train.model_dump()
    loss = LossConfig(
        **{key: train.pop(key) for key in ("use_fbk", "use_fac", "fbk_last_steps", "cfg_drop_prob")},
        sampling_steps=train.pop("fbk_schedule_steps"),
        fac_weight=params.fac_weight,
    )
    return TrainConfig(
        preset=params.model.preset,
        model_overrides=params.model.model_dump(exclude={"preset"}),
        seed=params.seed,
        loss=loss,
        **train,
    )


def data_id(windows: Path = WINDOWS) -> str:
    """Content hash of the training windows, so a checkpoint never resumes on other data."""
    return tracking.content_digest(windows, 16)


def loss_curve_csv(history: list[dict], val: list[dict]) -> str:
    val_by_step = {int(v["step"]): v for v in val}
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["step", "loss", "dm", "fbk", "fac", "val_loss"])
    for row in history:
        v = val_by_step.get(int(row["step"]), {})
        writer.writerow(
            [
                int(row["step"]),
                *(f"{row[k]:.6g}" for k in ("loss", "dm", "fbk", "fac")),
                v.get("val_loss", ""),
            ]
        )
    return buffer.getvalue()


def main() -> None:
    timer = StageTimer("train")
    params = load_params()
    cfg = train_config(params)
    history = params.model.speaker_history
    train_data = WindowDataset(WINDOWS / "train", params.windows.initial_past, speaker_history=history)
    val_data = WindowDataset(WINDOWS / "val", params.windows.initial_past, speaker_history=history)
    windows_id = data_id()
    fingerprint = config_fingerprint(cfg, train_data.audio_dim, windows_id)
    scratch = SCRATCH / f"{fingerprint}.pt"
    run_marker = scratch.with_suffix(".mlflow")
    rank0 = dist_info().rank == 0

    run = None
    if rank0:
        # An interrupted run continues in the same MLflow run as it continues from the same checkpoint.
        previous = run_marker.read_text().strip() if run_marker.exists() and scratch.exists() else None
        run = tracking.start_run("train", run_id=previous, seed=params.seed)
        if previous is None:
            tracking.log_params({"lambda": params.fac_weight, **params.model_dump(exclude={"fac_weight"})})
            tracking.log_datasets({str(WINDOWS): "training"})
            run_marker.parent.mkdir(parents=True, exist_ok=True)
            run_marker.write_text(run.info.run_id)

    def log(metrics: dict[str, float], step: int) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    print(
        f"[train] preset {cfg.preset}, {len(train_data)} train / {len(val_data)} val windows, "
        f"{cfg.steps} steps of {cfg.batch_size}; checkpoint {scratch}"
    )
    result = train(cfg, train_data, val_data, scratch, log=log if rank0 else None, data_id=windows_id)
    if run is None:  # a worker rank: rank 0 writes the model and records the run
        return

    import mlflow

    MODEL.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(MODEL) as tmp:
        shutil.copyfile(result.checkpoint, tmp)
    final = result.history[-1] if result.history else {}
    final_val = result.val[-1] if result.val else {}
    summary = {
        "parameters": result.parameters,
        "steps": result.final_step,
        "loss": final.get("loss"),
        "dm": final.get("dm"),
        "fbk": final.get("fbk"),
        "fac": final.get("fac"),
        "val_loss": final_val.get("val_loss"),
        "windows_per_s": final.get("windows_per_s"),
        "seconds": result.seconds,
        "device": str(result.device),
        "world_size": result.world_size,
    }
    atomic.write_json(summary, METRICS)
    atomic.write_text(loss_curve_csv(result.history, result.val), PLOT)
    mlflow.log_metric("parameters", result.parameters)
    mlflow.set_tags(
        {"parameters": str(result.parameters), "fingerprint": fingerprint, "windows_id": windows_id}
    )
    mlflow.log_artifact(str(PLOT))
    if MODEL.stat().st_size <= ARTIFACT_LIMIT_BYTES:
        mlflow.log_artifact(str(MODEL), artifact_path="model")
    else:
        mlflow.set_tag("checkpoint_path", str(MODEL.resolve()))
    tracking.write_run_file(run.info.run_id, parameters=result.parameters, fingerprint=fingerprint)
    mlflow.end_run()
    # The scratch copy only served resumption; the finished model lives in models/ (and DVC's cache).
    scratch.unlink(missing_ok=True)
    run_marker.unlink(missing_ok=True)
    timer.done(
        read=f"{WINDOWS}/ ({len(train_data)} windows)",
        wrote=f"{MODEL} ({result.parameters:,} parameters, final loss {summary['loss']:.4f}, "
        f"val {summary['val_loss']}), {METRICS}, {PLOT}, MLflow run {run.info.run_id}",
    )


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    run_stage(main, "train")
