"""Failure as a user meets it: a stage stopped by a bad file or param says so once, naming the file and
the fix, without a traceback, before any heavy work, and leaves what was on disk untouched."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.flows import run_stage
from reactdiff.checkpoints import CheckpointError
from reactdiff.errors import UserError
from reactdiff.training import CHECKPOINT_FORMAT

ROOT = Path(__file__).resolve().parents[1]


def _stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    return subprocess.run(
        [sys.executable, "-m", f"pipelines.{stage}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "models" / "teacher").mkdir(parents=True)
    return tmp_path


def test_a_truncated_checkpoint_stops_sample_once_before_any_work(project):
    good = project / "good.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "weights": torch.zeros(4096)}, good)
    model = project / "models" / "teacher" / "reactdiff.pt"
    model.write_bytes(good.read_bytes()[:2000])
    before = _digest(project)
    proc = _stage("sample", project)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if "reactdiff.pt" in line]
    assert lines == [
        "[sample] models/teacher/reactdiff.pt: is truncated (2000 bytes: the end of the archive is missing); "
        "train it again (`dvc repro train`, or `python -m pipelines.train`)"
    ]
    assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr + proc.stdout
    assert _digest(project) == before  # nothing written, nothing removed


def test_a_bad_param_stops_a_stage_naming_the_key(project):
    params = project / "params.yaml"
    params.write_text(params.read_text().replace("  steps: 1700", "  stepz: 1700"))
    proc = _stage("train", project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "[train] " in proc.stderr and "train.stepz" in proc.stderr


def test_only_user_errors_lose_their_traceback():
    def bad_checkpoint() -> None:
        raise CheckpointError("models/x.pt: checkpoint not found; train it")

    with pytest.raises(SystemExit, match=r"^\[sample\] models/x.pt: checkpoint not found; train it$"):
        run_stage(bad_checkpoint, "sample")

    def bug() -> None:
        raise KeyError("a developer's mistake")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        run_stage(bug, "sample")


@pytest.fixture(scope="module")
def features_run(tmp_path_factory) -> tuple[Path, dict]:
    """A project folder whose ``features`` stage has run once on a small corpus, and its environment."""
    import yaml

    from reactdiff.synthetic import SyntheticSpec, generate_corpus

    folder = tmp_path_factory.mktemp("features-run")
    spec = SyntheticSpec(
        seed=3, frames=400, families={"train": 2, "val": 1, "test": 1}, sessions_per_family=2
    )
    generate_corpus(folder / "corpus", spec)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["root"] = str(folder / "corpus")
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(
        [sys.executable, "-m", "pipelines.features"], cwd=folder, env=env, capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    return folder, env


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_stopped_stage_stops_every_process_it_started(tmp_path, signum, features_run):
    import signal

    import psutil

    folder, env = features_run
    shutil.copy2(folder / "params.yaml", tmp_path / "params.yaml")  # the corpus is read where it is
    shutil.copytree(folder / "features", tmp_path / "features")
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    before = _digest(tmp_path / "features")  # a complete earlier output, which the stopped run must keep
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.features"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        seen = []
        for line in proc.stdout:  # wait until Prefect's temporary server is up and the flow has begun
            seen.append(line)
            if "Beginning flow run" in line:
                break
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "".join(seen)  # the temporary API server at least
        proc.send_signal(getattr(signal, signum))
        rest = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    assert "[features] interrupted; the previous outputs are kept" in rest
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive  # no orphan server left listening
    assert _digest(tmp_path / "features") == before  # the earlier output, byte for byte, not a mix ...
    assert not list(tmp_path.glob(".features.*"))  # ... and no stray temporary folder


def test_train_without_windows_says_which_stage_to_run(project):
    proc = _stage("train", project)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        "[train] windows/train: no meta.json, sequences.arrow, index.parquet; build the windows first"
        in proc.stderr
    )


def test_evaluate_without_samples_says_which_stage_to_run(project, tmp_path):
    from reactdiff.evaluation import generated_reactions

    proc = _stage("evaluate", project)  # no features/ at all: the first thing it reads
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "[evaluate] features/test/examples.parquet: not found; extract the features first" in proc.stderr
    with pytest.raises(UserError, match="samples/test.parquet: not found; run the sample stage"):
        generated_reactions(tmp_path / "samples" / "test.parquet", split=None)
