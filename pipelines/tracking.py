"""MLflow conventions of the pipeline: where runs go, what every run is tagged with, and how the
stages after ``train`` find the run to log into.

The tracking URI defaults to a sqlite database in the project root (``sqlite:///mlflow.db``; the plain
file store is deprecated and sqlite also serves the UI), overridable with ``MLFLOW_TRACKING_URI``.
Open the UI with ``mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --workers 1`` at
``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning`` (MLflow 3's UI otherwise
starts in its GenAI mode, whatever the experiment's kind).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import reactdiff  # noqa: F401  (telemetry off before mlflow is imported)

EXPERIMENT = "reactdiff"
RUN_FILE = Path("models/teacher/mlflow_run.json")
LOCK_FILE = Path("dvc.lock")
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
"""MLflow 3's UI opens an experiment of no kind on its GenAI overview of traces; this kind opens it on
the runs table, which is where a model-training experiment is read."""


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


def experiment_id(client, name: str) -> str:
    """The id of MLflow experiment ``name``, created on first use; either way marked model training."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={KIND_TAG: KIND})
    if experiment.tags.get(KIND_TAG) != KIND:
        client.set_experiment_tag(experiment.experiment_id, KIND_TAG, KIND)
    return experiment.experiment_id


def run_name(stage: str, detail: str | None = None, seed: int | None = None) -> str:
    """What a run is, as the runs table shows it: ``sample teacher-sde-50 · lam-1e-3 · seed 0``.

    The middle part is the DVC experiment's name when the stage runs under ``dvc exp run`` (DVC sets
    ``DVC_EXP_NAME``); a plain ``dvc repro`` leaves it out.
    """
    parts = [f"{stage} {detail}" if detail else stage, os.environ.get("DVC_EXP_NAME")]
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(p for p in parts if p)


def start_run(
    stage: str,
    run_id: str | None = None,
    detail: str | None = None,
    seed: int | None = None,
    parent_run_id: str | None = None,
):
    """Start (or resume, given ``run_id``) a run of the pipeline's experiment, tagged per :func:`run_tags`.

    A new run is named per :func:`run_name`. ``parent_run_id`` makes it a child run: the stages after
    ``train`` log each sampling/evaluation variant as a child of the training run, so variants that
    reuse one model sit under it in the UI.
    """
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    if run_id is not None:
        return mlflow.start_run(run_id=run_id)
    experiment = experiment_id(
        mlflow.MlflowClient(), os.environ.get("REACTDIFF_MLFLOW_EXPERIMENT", EXPERIMENT)
    )
    tags = run_tags(stage)
    if seed is not None:
        tags["seed"] = str(seed)
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return mlflow.start_run(experiment_id=experiment, run_name=run_name(stage, detail, seed), tags=tags)


def active_run_id() -> str:
    """The id of the run this process has open (:func:`start_run`); an error when none is."""
    import mlflow

    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no MLflow run is active: start one with tracking.start_run() or pass run_id")
    return run.info.run_id


def content_digest(root: Path, length: int = 32) -> str:
    """SHA-256 over the relative paths and bytes of every file under ``root``, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:length]


def dvc_hash(path: str, lock_text: str | None) -> str | None:
    """The hash ``dvc.lock`` records for the stage output ``path`` (a folder's without ``.dir``)."""
    if not lock_text:
        return None
    import yaml

    for stage in (yaml.safe_load(lock_text) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == path:
                value = out.get("md5") or out.get("hash")
                return str(value).removesuffix(".dir") if value else None
    return None


def log_datasets(
    contexts: Mapping[str, str], run_id: str | None = None, lock_text: str | None = None
) -> dict[str, str]:
    """Log stage outputs a run read as MLflow datasets: ``{path: context}`` (``"training"``, ...).

    The digest is the hash DVC recorded for the output in ``lock_text`` (default: the workspace's
    ``dvc.lock``), so the runs table's Dataset column tells runs on different data apart at a glance
    and names the same data as ``dvc.lock`` does; an output DVC has not recorded gets the SHA-256 of
    its files, and one that is neither recorded nor there is left out. Logs to ``run_id``, or to the
    active run. Returns ``{path: digest}``.
    """
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag

    if lock_text is None and LOCK_FILE.exists():
        lock_text = LOCK_FILE.read_text()
    digests, inputs = {}, []
    for path, context in contexts.items():
        digest = dvc_hash(path, lock_text)
        if digest is None and not Path(path).exists():
            continue  # neither recorded nor there: nothing to name
        digest = digest or content_digest(Path(path))
        source = json.dumps({"uri": str(Path(path).resolve())})
        dataset = Dataset(name=path, digest=digest, source_type="local", source=source)
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", context)]))
        digests[path] = digest
    mlflow.MlflowClient(tracking_uri()).log_inputs(run_id or active_run_id(), datasets=inputs)
    return digests


def log_params(params: Mapping[str, Any], run_id: str | None = None) -> None:
    """Log ``params`` flattened, to the active run or to ``run_id`` (a run not started in this process)."""
    import mlflow
    from mlflow.entities import Param

    items = list(flatten(params).items())
    chunks = [dict(items[start : start + 100]) for start in range(0, len(items), 100)]  # MLflow's cap
    if run_id is None:
        for chunk in chunks:
            mlflow.log_params(chunk)
        return
    client = mlflow.MlflowClient(tracking_uri())
    for chunk in chunks:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in chunk.items()])


def write_run_file(run_id: str, path: Path = RUN_FILE, **extra: Any) -> None:
    from reactdiff import atomic

    atomic.write_json({"run_id": run_id, "tracking_uri": tracking_uri(), **extra}, path)


def read_run_id(path: Path = RUN_FILE) -> str:
    if not path.exists():
        raise SystemExit(f"{path} not found: run the `train` stage first (dvc repro train)")
    return json.loads(path.read_text())["run_id"]
