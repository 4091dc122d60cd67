"""End to end: `dvc repro` of the whole DAG in a fresh copy of the project, on a tiny synthetic corpus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["make_sample", "features", "windows"]


def _run(args: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A fresh git clone-like copy of the working tree with tiny params, and an env whose python is ours."""
    dest = tmp_path_factory.mktemp("e2e") / "project"
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["sample_corpus"].update(
        frames=120, sample_rate=16000, families={"train": 2, "val": 1, "test": 1}, sessions_per_family=2
    )
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "fixture"]):
        _run(
            cmd if cmd[1] != "commit" else ["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd[1:]],
            dest,
            env,
        )
    return dest, env


def test_dvc_repro_runs_every_stage(project):
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    dag = _run([*dvc, "dag", "--md"], dest, env)
    for stage in STAGES:
        assert stage in dag
    log = _run([*dvc, "repro"], dest, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    report = json.loads((dest / "features" / "report.json").read_text())
    assert report["splits"]["train"]["clips_written"] == 8
    assert report["splits"]["test"]["examples_usable"] == 4
    meta = json.loads((dest / "windows" / "train" / "meta.json").read_text())
    assert meta["examples"] == 8 and meta["windows"] > 0
    frames = pq.read_table(dest / "features" / "test" / "frames.parquet")
    assert frames.num_rows == 8 * 121 // 2  # 4 test clips of 121 rows each
    # Nothing changed: a second repro runs nothing.
    again = _run([*dvc, "repro"], dest, env)
    assert "Running stage" not in again
    # The corpus param is read through data.root, and data.dvc still points at the (absent) real corpus.
    assert yaml.safe_load((dest / "data.dvc").read_text())["outs"][0]["path"] == "data"


def test_dvc_exp_run_with_a_changed_param(project):
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], dest, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "lock"], dest, env)
    log = _run([*dvc, "exp", "run", "-S", "windows.stride=8"], dest, env)
    assert "Running stage 'windows'" in log
    assert "Running stage 'features'" not in log  # unaffected stages come from the cache
    meta = json.loads((dest / "windows" / "train" / "meta.json").read_text())
    assert meta["stride"] == 8
    shown = _run([*dvc, "exp", "show", "--csv"], dest, env)
    assert "windows.stride" in shown
