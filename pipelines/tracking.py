"""MLflow conventions of the pipeline: where runs go, what every run is tagged with, and how the
stages after ``train`` find the run to log into.

The tracking URI defaults to a sqlite database in the project root (``sqlite:///mlflow.db``; the plain
file store is deprecated and sqlite also serves the UI), overridable with ``MLFLOW_TRACKING_URI``.
Open the UI with ``mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --workers 1``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import reactdiff  # noqa: F401  (telemetry off before mlflow is imported)

EXPERIMENT = "reactdiff"
RUN_FILE = Path("models/mlflow_run.json")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``; lists become their string form."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def run_tags(stage: str) -> dict[str, str]:
    """Tags that let a user find a run from a commit or a DVC experiment, and vice versa."""
    tags = {"stage": stage}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    for env, tag in (("DVC_EXP_NAME", "dvc_exp_name"), ("DVC_EXP_BASELINE_REV", "dvc_exp_baseline_rev")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def start_run(
    stage: str, run_id: str | None = None, run_name: str | None = None, parent_run_id: str | None = None
):
    """Start (or resume, given ``run_id``) a run of the pipeline's experiment, tagged per :func:`run_tags`.

    ``parent_run_id`` makes it a child run: the stages after ``train`` log each sampling/evaluation
    variant as a child of the training run, so variants that reuse one model sit under it in the UI.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    mlflow.set_experiment(os.environ.get("REACTDIFF_MLFLOW_EXPERIMENT", EXPERIMENT))
    name = run_name or os.environ.get("DVC_EXP_NAME")
    tags = run_tags(stage)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
        if os.environ.get("DVC_EXP_NAME"):
            name = f"{os.environ['DVC_EXP_NAME']}/{name}"
    return mlflow.start_run(run_name=name, tags=tags)


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log ``params`` flattened, to the active run or to ``run_id`` (a run not started in this process)."""
    import mlflow

    items = list(flatten(params).items())
    client = mlflow.MlflowClient(tracking_uri()) if run_id is not None else None
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        chunk = dict(items[start : start + 100])
        if client is None:
            mlflow.log_params(chunk)
        else:
            from mlflow.entities import Param

            client.log_batch(run_id, params=[Param(k, str(v)) for k, v in chunk.items()])


def write_run_file(run_id: str, path: Path = RUN_FILE, **extra: Any) -> None:
    from reactdiff import atomic

    atomic.write_json({"run_id": run_id, "tracking_uri": tracking_uri(), **extra}, path)


def read_run_id(path: Path = RUN_FILE) -> str:
    if not path.exists():
        raise SystemExit(f"{path} not found: run the `train` stage first (dvc repro train)")
    return json.loads(path.read_text())["run_id"]
