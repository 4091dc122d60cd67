"""DVC stage ``distill``: the trained teacher, guided as the sample stage runs it, distilled into a small
few-step student (reactdiff/distillation.py) and tracked in MLflow as a child of the training run.

    python -m pipelines.distill

Writes ``models/student/reactdiff.pt`` (a checkpoint in the training format: ``load_denoiser`` loads the
student, with ``weights_only``), ``models/student/mlflow_run.json`` and ``metrics/distill.json``. An
interrupted run resumes from ``checkpoints/distill-<fingerprint>.pt``; the fingerprint covers the
teacher's weights, the windows, the guidance distilled and every ``distill.*`` setting that changes the
trajectory. ``dvc exp run -S sample.model=student`` then samples, evaluates and renders the student.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from pipelines import tracking
from pipelines.flows import StageTimer, run_stage
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.distillation import distill
from reactdiff.training import load_checkpoint, load_denoiser
from reactdiff.windows import WindowDataset

WINDOWS = Path("windows")
TEACHER = Path("models/teacher/reactdiff.pt")
OUT = Path("models/student")
STUDENT = OUT / "reactdiff.pt"
SCRATCH = Path("checkpoints")
METRICS = Path("metrics/distill.json")


def main() -> None:
    timer = StageTimer("distill")
    params = load_params()
    cfg = params.distill
    teacher_preset = load_checkpoint(TEACHER)["model_args"]["preset"]
    teacher = load_denoiser(TEACHER, device="cpu")
    history = params.model.speaker_history
    train_data = WindowDataset(WINDOWS / "train", params.windows.initial_past, speaker_history=history)
    val_data = WindowDataset(WINDOWS / "val", params.windows.initial_past, speaker_history=history)
    teacher_digest = hashlib.sha256(TEACHER.read_bytes()).hexdigest()[:16]
    interval = params.sample.guidance_interval
    guidance: dict[str, Any] = dict(
        guidance_scale=params.sample.guidance_scale,
        guidance_interval=None if interval is None else (interval[0], interval[1]),
    )
    print(
        f"[distill] {teacher_preset} teacher {TEACHER}, guidance {guidance['guidance_scale']} at sigma in "
        f"{interval or 'all levels'}; {cfg.steps} steps ({cfg.warmup_steps} regression) of {cfg.batch_size}"
    )

    import mlflow

    parent = tracking.read_run_id()
    with tracking.start_run("distill", seed=params.seed, parent_run_id=parent) as run:
        tracking.log_params({"seed": params.seed, "distill": cfg.model_dump(), **guidance})
        tracking.log_datasets({str(WINDOWS): "training"})

        def log(metrics: dict[str, float], step: int) -> None:
            mlflow.log_metrics(metrics, step=step)

        result = distill(
            cfg,
            teacher,
            teacher_preset,
            train_data,
            val_data,
            SCRATCH / f"distill-{_scratch_key(teacher_digest, params.seed)}.pt",
            seed=params.seed,
            student_steps=params.sample.student.steps,
            teacher_digest=teacher_digest,
            data_id=tracking.content_digest(WINDOWS, 16),
            log=log,
            **guidance,
        )
        final = result.history[-1] if result.history else {}
        summary = {
            "student_parameters": result.student_parameters,
            "teacher_parameters": result.teacher_parameters,
            "parameter_ratio": result.student_parameters / result.teacher_parameters,
            "loss": final.get("loss"),
            **result.val,
            "steps": cfg.steps,
            "seconds": result.seconds,
            "device": result.device,
        }
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        with atomic.atomic_dir(OUT) as out:
            shutil.copyfile(result.checkpoint, out / STUDENT.name)
            tracking.write_run_file(run.info.run_id, out / "mlflow_run.json", parent_run_id=parent)
        atomic.write_json(summary, METRICS)
        mlflow.log_artifact(str(STUDENT), artifact_path="model")
    result.checkpoint.unlink(missing_ok=True)
    timer.done(
        read=f"{TEACHER}, {WINDOWS}/",
        wrote=f"{STUDENT} ({result.student_parameters:,} parameters, {summary['parameter_ratio']:.2f} of the "
        f"teacher's; one-step gap {summary.get('one_step_gap', float('nan')):.4f} against the teacher's "
        f"spread {summary.get('teacher_spread', float('nan')):.4f}), {METRICS}",
    )


def _scratch_key(teacher_digest: str, seed: int) -> str:
    # The scratch file is per teacher and seed; distill() itself refuses one of another configuration.
    return f"{teacher_digest}-{seed}"


if __name__ == "__main__":
    from pipelines import distill as stage

    run_stage(stage.main, "distill")
