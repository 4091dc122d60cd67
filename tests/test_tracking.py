"""MLflow conventions: experiments open as model training, runs say what they are, data shows as datasets."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from pipelines import tracking

LOCK = """\
schema: '2.0'
stages:
  windows:
    cmd: python -m pipelines.windows
    outs:
    - path: windows
      hash: md5
      md5: a139b87f054d47c3c7f9b216c92c7928.dir
      size: 10
  evaluate:
    outs:
    - path: metrics/evaluate.json
      hash: md5
      md5: 84f968ff144820b1cbe5bc473d2381b1
"""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> mlflow.MlflowClient:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return mlflow.MlflowClient(tracking.tracking_uri())


def test_experiments_are_created_and_marked_as_model_training(store):
    created = tracking.experiment_id(store, "fresh")
    assert store.get_experiment(created).tags[tracking.KIND_TAG] == "custom_model_development"
    older = store.create_experiment("older")  # made before the tag existed: marked on first use
    assert tracking.experiment_id(store, "older") == older
    assert store.get_experiment(older).tags[tracking.KIND_TAG] == "custom_model_development"


def test_run_names_say_stage_experiment_and_seed(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert tracking.run_name("train", seed=0) == "train · seed 0"
    assert tracking.run_name("sample", "sde-50", seed=3) == "sample sde-50 · seed 3"
    monkeypatch.setenv("DVC_EXP_NAME", "lam-1e-3")
    assert tracking.run_name("train", seed=0) == "train · lam-1e-3 · seed 0"


def test_a_stage_run_is_named_and_tagged_with_its_seed(store):
    with tracking.start_run("train", seed=4) as run:
        pass
    logged = store.get_run(run.info.run_id)
    assert logged.info.run_name == "train · seed 4" and logged.data.tags["seed"] == "4"
    assert logged.data.tags["stage"] == "train"


def test_datasets_carry_the_hash_dvc_recorded(store, tmp_path):
    (tmp_path / "windows").mkdir()
    (tmp_path / "features" / "test").mkdir(parents=True)
    (tmp_path / "features" / "test" / "frames.parquet").write_bytes(b"abc")
    assert tracking.dvc_hash("windows", LOCK) == "a139b87f054d47c3c7f9b216c92c7928"  # ".dir" dropped
    assert tracking.dvc_hash("metrics/evaluate.json", LOCK) == "84f968ff144820b1cbe5bc473d2381b1"
    assert tracking.dvc_hash("features", LOCK) is None and tracking.dvc_hash("windows", None) is None
    with tracking.start_run("train", seed=0) as run:
        digests = tracking.log_datasets({"windows": "training", "features": "evaluation"}, lock_text=LOCK)
    # An output dvc.lock does not record gets the SHA-256 of its files (relative path, then bytes).
    import hashlib

    expected = hashlib.sha256(b"test/frames.parquet" + b"abc").hexdigest()[:32]
    assert digests == {"windows": "a139b87f054d47c3c7f9b216c92c7928", "features": expected}
    inputs = store.get_run(run.info.run_id).inputs.dataset_inputs
    logged = {i.dataset.name: i for i in inputs}
    assert logged["windows"].dataset.digest == "a139b87f054d47c3c7f9b216c92c7928"
    assert {t.key: t.value for t in logged["windows"].tags}["mlflow.data.context"] == "training"
    assert json.loads(logged["features"].dataset.source)["uri"] == str((tmp_path / "features").resolve())
