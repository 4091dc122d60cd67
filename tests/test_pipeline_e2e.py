"""End to end: `dvc repro` of the whole DAG in a fresh copy of the project, on a tiny synthetic corpus."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from reactdiff.evaluation import BASELINE_ORDER

pytestmark = pytest.mark.slow  # the whole DAG in a fresh project copy, the longest tests of the suite

ROOT = Path(__file__).resolve().parents[1]
STAGES = [
    "make_sample",
    "features",
    "windows",
    "realism_encoder",
    "train",
    "denoising",
    "distill",
    "sample",
    "baselines",
    "evaluate",
    "render",
]


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
    params["train"].update(
        steps=30, batch_size=16, log_every=10, val_every=15, val_batches=1, checkpoint_every=15
    )
    params["sample"].update(samples=2, steps=3, workers=2)
    params["distill"].update(
        steps=10,
        batch_size=8,
        pool_windows=16,
        pool_refresh=5,
        teacher_ode_steps=4,
        log_every=5,
        checkpoint_every=5,
        val_batches=1,
    )
    params["render"].update(sessions=1, tile=64)
    params["realism"].update(steps=20, batch_size=8)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(dest)
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's default: sqlite in the project folder
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "fixture"]):
        _run(
            cmd if cmd[1] != "commit" else ["git", "-c", "user.name=t", "-c", "user.email=t@t", *cmd[1:]],
            dest,
            env,
        )
    # One Prefect server for the module's two dozen stage runs, as a lab runs one: each stage that fans
    # out would otherwise start (and stop) a temporary server of its own, about 5 s a time. Every test
    # outside this module runs the stages on that default temporary server.
    with _prefect_server(dest.parent / "prefect", env) as api_url:
        env["PREFECT_API_URL"] = api_url
        yield dest, env


@contextlib.contextmanager
def _prefect_server(home: Path, env: dict) -> Iterator[str]:
    """``prefect server start`` on loopback with its own ``PREFECT_HOME``; yields its API URL and stops
    it by PID at the end."""
    import httpx

    port = _free_port()
    server_env = {**env, "PREFECT_HOME": str(home)}
    server_env.pop("PREFECT_API_URL", None)
    prefect = str(Path(sys.executable).parent / "prefect")
    proc = subprocess.Popen(
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-services"],
        env=server_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, "prefect server start exited"
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start"
            time.sleep(0.5)
        yield api_url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


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
    # dvc exp show leads with the model's headline metrics, and the constant baselines are not columns
    header = _run([*dvc, "exp", "show", "--md", "--no-pager"], dest, env).splitlines()[0]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[2:6] == ["all.FRCorr", "all.FRDist", "all.FRDiv", "all.FRDvs"], columns[:8]
    assert not any("NN motion" in c for c in columns)
    assert report["splits"]["test"]["examples_usable"] == 4
    meta = json.loads((dest / "windows" / "train" / "meta.json").read_text())
    assert meta["examples"] == 8 and meta["windows"] > 0
    frames = pq.read_table(dest / "features" / "test" / "frames.parquet")
    assert frames.num_rows == 8 * 121 // 2  # 4 test clips of 121 rows each
    train = json.loads((dest / "metrics" / "train.json").read_text())
    assert train["steps"] == 30 and train["parameters"] > 0
    curve = json.loads((dest / "metrics" / "denoiser.json").read_text())
    assert list(curve) == [f"sigma_{s:g}" for s in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)]
    for name, row in curve.items():
        assert row["noisy"] == pytest.approx(float(name[6:]) ** 2, rel=0.2)
        assert row["linear"] > 0 and row["model"] > 0
        if float(name[6:]) >= 1:  # the tiny corpus's few windows fit the full covariance poorly below
            assert row["linear"] < row["noisy"] and row["model"] < row["noisy"]
    assert (dest / "plots" / "denoiser.png").stat().st_size > 0
    samples = pq.read_table(dest / "samples" / "test.parquet")
    assert samples.num_rows == 4 * 2 * 121  # 4 test examples x M=2 x every frame
    coeffs = np.stack(samples.column("coeffs").to_numpy(zero_copy_only=False))
    assert coeffs.shape == (4 * 2 * 121, 58) and np.isfinite(coeffs).all()
    assert coeffs[:, :52].min() >= 0.0 and coeffs[:, :52].max() <= 1.0  # blendshape weights
    evaluation = json.loads((dest / "metrics" / "evaluate.json").read_text())
    assert set(evaluation) == {"all", "expression", "pose"}
    assert evaluation["all"]["FRDiv"] > 0
    assert "FD_learned" in evaluation["all"] and "Jitter" in evaluation["all"]
    assert (dest / "models_realism" / "encoder.pt").stat().st_size > 0
    baselines = json.loads((dest / "metrics" / "baselines.json").read_text())
    assert set(baselines) == set(BASELINE_ORDER)
    assert baselines["Appropriate real"]["all"]["FRDiv"] > 0  # M = 2 of the test clips' appropriate sets
    report = (dest / "reports" / "evaluate.md").read_text()
    assert "| ReactDiff |" in report and "| Appropriate real |" in report
    assert len(list((dest / "renders").glob("*.mp4"))) == 2  # one session, both directions
    assert (dest / "plots" / "metrics.png").stat().st_size > 0
    # Every stage after train logged into MLflow: one training run with its sampling run as a child.
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("reactdiff").experiment_id])
    by_stage = {r.data.tags["stage"]: r for r in runs}
    assert set(by_stage) == {"train", "distill", "sample"}
    assert by_stage["sample"].data.tags["mlflow.parentRunId"] == by_stage["train"].info.run_id
    assert by_stage["distill"].data.tags["mlflow.parentRunId"] == by_stage["train"].info.run_id
    distilled = json.loads((dest / "metrics" / "distill.json").read_text())
    assert distilled["parameter_ratio"] <= 0.25 and distilled["one_step_gap"] > 0
    cost = json.loads((dest / "metrics" / "sample.json").read_text())
    assert cost["model"] == "teacher" and cost["evaluations_per_window"] == 3 and cost["fps"] > 0
    assert "loss" in by_stage["train"].data.metrics and "all.FRCorr" in by_stage["sample"].data.metrics
    assert "denoise_model_sigma_0.1" in by_stage["train"].data.metrics
    assert by_stage["train"].data.params["lambda"] == "0.0001"
    # Nothing changed: a second repro runs nothing.
    again = _run([*dvc, "repro"], dest, env)
    assert "Running stage" not in again
    # The corpus param is read through data.root, and data.dvc still points at the (absent) real corpus.
    assert yaml.safe_load((dest / "data.dvc").read_text())["outs"][0]["path"] == "data"


def test_dvc_exp_run_lambda_and_a_sampling_only_change(project):
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], dest, env)
    # Up to `evaluate`, as the ablation runner runs its variants (the whole DAG ran in the test above,
    # and runs in the student's experiment below): a minute less of the suite.
    log = _run([*dvc, "exp", "run", "-S", "lambda=0.001", "--name", "lam-1e-3", "evaluate"], dest, env)
    assert "Running stage 'train'" in log and "Running stage 'evaluate'" in log
    assert "Running stage 'features'" not in log  # unaffected stages come from the cache
    log = _run([*dvc, "exp", "run", "-S", "sample.steps=2", "--name", "steps-2", "evaluate"], dest, env)
    assert "Running stage 'sample'" in log
    assert "Running stage 'train'" not in log  # a sampling-only variant reuses the trained model
    # The distilled student samples, evaluates and renders like any variant, with its own recipe.
    log = _run([*dvc, "exp", "run", "-S", "sample.model=student", "--name", "student"], dest, env)
    assert "Running stage 'sample'" in log and "Running stage 'train'" not in log
    assert "[sample] test: student models/student/reactdiff.pt, M=2, 4 steps, consistency" in log
    # Back to the committed teacher workspace for the tests after this one (dvc exp run leaves its params):
    # the teacher's outputs come back from DVC's run cache.
    _run(["git", "checkout", "--", "params.yaml", "dvc.lock"], dest, env)
    _run([*dvc, "repro"], dest, env)
    shown = _run([*dvc, "exp", "show", "--csv"], dest, env)
    assert "lam-1e-3" in shown and "steps-2" in shown and "student" in shown and "all.FRCorr" in shown
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("reactdiff").experiment_id])
    tagged = {r.data.tags.get("dvc_exp_name") for r in runs}
    assert {"lam-1e-3", "steps-2", "student"} <= tagged
    student = next(
        r for r in runs if r.data.tags.get("dvc_exp_name") == "student" and "sample" in r.info.run_name
    )
    distill = client.get_run(student.data.tags["mlflow.parentRunId"])  # the student's samples sit under
    assert distill.data.tags["stage"] == "distill"  # its distillation run, itself under the training run
    assert client.get_run(distill.data.tags["mlflow.parentRunId"]).data.tags["stage"] == "train"


def test_ablation_table_runs_as_experiments_and_reports_from_mlflow(project, tmp_path):
    # Table 5 (SDE vs ODE) with two seeds on the tiny project: four DVC experiments (seed 0 reuses the
    # trained model, seed 1 trains its own once), one MLflow parent run with a child per variant and
    # seed, and the report built from those records with the standard error over the seeds.
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], dest, env)
    _run(["git", "add", "-A"], dest, env)
    _run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock", "--allow-empty"],
        dest,
        env,
    )
    params_before = (dest / "params.yaml").read_text()
    metrics_before = (dest / "metrics" / "evaluate.json").read_text()
    args = [sys.executable, "-m", "pipelines.ablations", "run", "--tables", "table5", "--seeds", "2"]
    log = _run(args, dest, env)
    assert log.count("Running stage 'train'") == 1  # seed 1's model; seed 0 reuses the workspace's
    assert "variant 1 of 4:" in log and "variant 4 of 4:" in log and "left" in log
    assert (dest / "params.yaml").read_text() == params_before  # the workspace is restored
    assert (dest / "metrics" / "evaluate.json").read_text() == metrics_before
    shown = _run([*dvc, "exp", "show", "--csv"], dest, env)
    assert "table5-ode-s0" in shown and "table5-sde-s1" in shown

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{dest / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("reactdiff-ablations")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("reactdiff.role") == "table"]
    children = [r for r in runs if r.data.tags.get("reactdiff.role") == "variant"]
    assert len(parents) == 1 and parents[0].data.tags["reactdiff.table"] == "table5"
    assert parents[0].info.run_name.startswith("table5 · abl-")  # what it is first: the column is narrow
    assert {i.dataset.name for i in parents[0].inputs.dataset_inputs} == {"windows", "features"}
    by_key = {(r.data.tags["reactdiff.variant"], r.data.tags["reactdiff.seed"]): r for r in children}
    assert sorted(by_key) == [("ODE", "0"), ("ODE", "1"), ("SDE", "0"), ("SDE", "1")]
    for (variant, seed), child in by_key.items():
        assert child.info.run_name == f"table5 / {variant} / seed {seed}"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.params["sample.solver"] == variant.lower() and child.data.params["seed"] == seed
        assert {"all.FRCorr", "all.FRDiv", "pose.FRSyn", "all.Jitter"} <= set(child.data.metrics)
        assert child.data.tags["dvc_exp_name"].endswith(f"{variant.lower()}-s{seed}")
        curve = client.get_metric_history(child.info.run_id, "train.curve.loss")
        assert len(curve) >= 2 and curve[-1].step > curve[0].step
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert "plots/train_loss.png" in artifacts
        datasets = {i.dataset.name: i.dataset.digest for i in child.inputs.dataset_inputs}
        lock = yaml.safe_load(_run(["git", "show", f"{child.data.tags['dvc_exp_rev']}:dvc.lock"], dest, env))
        windows = next(o for o in lock["stages"]["windows"]["outs"] if o["path"] == "windows")
        assert datasets["windows"] == windows["md5"].removesuffix(".dir") and "features" in datasets
    # A seed reaches training (another model) and sampling (other noise, so other reactions).
    for variant in ("ODE", "SDE"):
        first, second = by_key[(variant, "0")].data.metrics, by_key[(variant, "1")].data.metrics
        assert first["all.FRDiv"] != second["all.FRDiv"]
    assert by_key[("ODE", "0")].data.metrics["train.loss"] != by_key[("ODE", "1")].data.metrics["train.loss"]
    assert by_key[("ODE", "0")].data.metrics["train.loss"] == by_key[("SDE", "0")].data.metrics["train.loss"]

    report = (dest / "reports" / "ablations.md").read_text()
    assert "## Table 5: SDE versus ODE sampling" in report and "| ODE | 2 |" in report and " ± " in report
    assert "SDE sampling is more diverse than ODE (FRDiv higher)" in report
    assert "Claims of the paper, judged on our numbers: holds:" in report
    frame = pd.read_csv(dest / "reports" / "ablations.csv")
    ours = frame[(frame.source == "ours") & (frame.metric == "FRDiv")].set_index("variant")
    runs_ode = [by_key[("ODE", s)].data.metrics["all.FRDiv"] for s in ("0", "1")]
    assert ours.loc["ODE", "value"] == pytest.approx(np.mean(runs_ode)) and ours.loc["ODE", "n"] == 2
    assert ours.loc["ODE", "se"] == pytest.approx(np.std(runs_ode, ddof=1) / np.sqrt(2))

    # The stage runs of the pipeline's own experiment say what they are too.
    stage_runs = client.search_runs([client.get_experiment_by_name("reactdiff").experiment_id])
    names = {r.info.run_name for r in stage_runs}
    assert "train · seed 0" in names and any(n.startswith("sample teacher-sde-") for n in names)

    # Resumable: a second run finds every variant and seed recorded and runs nothing.
    again = _run(args, dest, env)
    assert "0 variant(s) to run or record" in again and "Running stage" not in again

    # The campaign moves to another store through a file: the same records, the same report, and there
    # too nothing left to run; importing twice adds nothing.
    _run([sys.executable, "-m", "pipelines.ablations", "export"], dest, env)
    assert (dest / "reports" / "ablations.runs.json.gz").stat().st_size > 0
    elsewhere = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'elsewhere.db'}"}
    imported = _run([sys.executable, "-m", "pipelines.ablations", "import"], dest, elsewhere)
    assert "5 runs imported" in imported  # the table's parent and its 4 children
    assert "0 runs imported" in _run([sys.executable, "-m", "pipelines.ablations", "import"], dest, elsewhere)
    other = mlflow.MlflowClient(tracking_uri=elsewhere["MLFLOW_TRACKING_URI"])
    moved = other.search_runs([other.get_experiment_by_name("reactdiff-ablations").experiment_id])
    moved_children = {
        (r.data.tags["reactdiff.variant"], r.data.tags["reactdiff.seed"]): r
        for r in moved
        if r.data.tags.get("reactdiff.role") == "variant"
    }
    moved_parent = next(r for r in moved if r.data.tags.get("reactdiff.role") == "table")
    for key, child in by_key.items():
        copy = moved_children[key]
        assert copy.data.metrics == child.data.metrics and copy.data.params == child.data.params
        assert copy.data.tags["mlflow.parentRunId"] == moved_parent.info.run_id
        assert [
            (m.step, m.value) for m in other.get_metric_history(copy.info.run_id, "train.curve.loss")
        ] == [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "train.curve.loss")]
    report_args = ["report", "--tables", "table5", "--out", str(tmp_path)]
    _run([sys.executable, "-m", "pipelines.ablations", *report_args], dest, elsewhere)
    assert (tmp_path / "ablations.csv").read_text() == (dest / "reports" / "ablations.csv").read_text()
    resumed = _run(args, dest, elsewhere)
    assert "0 variant(s) to run or record" in resumed and "Running stage" not in resumed


def test_outputs_travel_through_a_dvc_remote(project, tmp_path):
    """What a lab does between machines: push the pipeline's outputs, pull them into an empty cache."""
    dest, env = project
    dvc = [sys.executable, "-m", "dvc"]
    outputs = ["features", "windows", "models", "samples"]
    before = {
        str(p.relative_to(dest)): p.read_bytes()
        for out in outputs
        for p in (dest / out).rglob("*")
        if p.is_file()
    }
    assert any(name.startswith("models/") for name in before)
    _run([*dvc, "remote", "add", "--local", "-d", "lab", str(tmp_path / "remote")], dest, env)
    pushed = _run([*dvc, "push", "dvc.yaml"], dest, env)
    assert "pushed" in pushed
    for out in [*outputs, ".dvc/cache"]:
        shutil.rmtree(dest / out)
    _run([*dvc, "pull", "dvc.yaml"], dest, env)
    after = {
        str(p.relative_to(dest)): p.read_bytes()
        for out in outputs
        for p in (dest / out).rglob("*")
        if p.is_file()
    }
    assert after == before  # byte for byte, from the remote alone
    assert "changed outs" not in _run([*dvc, "status", "dvc.yaml"], dest, env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


@pytest.mark.skipif(_postgres_bin() is None, reason="needs Debian's postgresql (.ci/run installs it)")
def test_stages_log_to_a_shared_tracking_server_on_postgresql(project, tmp_path):
    """A lab's setup: an MLflow tracking server on PostgreSQL with its own artifact store, over HTTP."""
    import httpx
    import mlflow

    dest, env = project
    bin_dir = _postgres_bin()
    import tempfile

    cluster = Path(tempfile.mkdtemp(prefix="reactdiff-pg-"))  # outside pytest's root-only folders
    data, socket_dir = cluster / "data", cluster / "socket"
    data.mkdir()
    socket_dir.mkdir()
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user runs the throwaway cluster
        as_postgres = ["runuser", "-u", "postgres", "--"]
        os.chmod(cluster, 0o755)
        for folder in (data, socket_dir):
            shutil.chown(folder, "postgres")
    pg_port, port = _free_port(), _free_port()
    initdb = [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"]
    _run(initdb, cluster, env)
    pg_ctl = [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w"]
    options = f"-p {pg_port} -k {socket_dir} -c listen_addresses=127.0.0.1"
    _run([*pg_ctl, "-o", options, "-l", str(data / "server.log"), "start"], cluster, env)
    server = None
    try:
        _run(
            [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", "mlflow", "mlflow"],
            tmp_path,
            env,
        )
        store = f"postgresql+psycopg2://mlflow@127.0.0.1:{pg_port}/mlflow"
        server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        uri = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "the tracking server did not start"
            time.sleep(1)

        remote = {**env, "MLFLOW_TRACKING_URI": uri}
        for stage in ("train", "sample", "evaluate"):
            _run([sys.executable, "-m", f"pipelines.{stage}"], dest, remote)

        client = mlflow.MlflowClient(tracking_uri=uri)
        runs = client.search_runs([client.get_experiment_by_name("reactdiff").experiment_id])
        train = next(r for r in runs if r.info.run_name.startswith("train"))
        sample = next(r for r in runs if r.info.run_name.startswith("sample"))
        params = yaml.safe_load((dest / "params.yaml").read_text())
        assert train.data.params["train.steps"] == str(params["train"]["steps"])
        assert "train.loss" in train.data.metrics or "loss" in train.data.metrics
        assert sample.data.tags["mlflow.parentRunId"] == train.info.run_id  # nested under its model
        assert "all.FRCorr" in sample.data.metrics  # evaluate logged into the sampling run
        model = Path(client.download_artifacts(train.info.run_id, "model/reactdiff.pt", str(tmp_path)))
        assert model.read_bytes() == (dest / "models" / "teacher" / "reactdiff.pt").read_bytes()
        assert list((tmp_path / "artifacts").rglob("reactdiff.pt"))  # the server's artifact store has it
    finally:
        try:
            if server is not None and server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)  # the server and its workers, by PID
                server.wait(timeout=30)
        finally:
            _run([*pg_ctl, "stop", "-m", "fast"], cluster, env)  # whatever happened above
            shutil.rmtree(cluster)


@contextlib.contextmanager
def _dask_cluster(dest: Path, env: dict, workers: list[list[str]]) -> Iterator[tuple[str, list]]:
    """A Dask scheduler and one worker per entry of ``workers`` (its extra arguments), each a separate
    process on loopback; yields the scheduler's address and the worker processes, and stops them all by
    PID at the end."""
    from distributed import Client

    dask = str(Path(sys.executable).parent / "dask")
    address = f"tcp://127.0.0.1:{_free_port()}"
    started = [
        subprocess.Popen(
            [dask, "scheduler", "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1], "--no-dashboard"],
            cwd=dest, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
    ]  # fmt: skip
    try:
        for k, extra in enumerate(workers):
            started.append(
                subprocess.Popen(
                    [dask, "worker", address, "--nthreads", "1", "--no-dashboard", "--name", f"w{k}",
                     "--local-directory", str(dest / ".dask"), *extra],
                    cwd=dest, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout=5) as client:
                    client.wait_for_workers(len(workers), timeout=60)
                    break
            except OSError:
                assert time.monotonic() < deadline, "the Dask cluster did not start"
                time.sleep(1)
        yield address, started[1:]
    finally:
        for proc in reversed(started):  # workers first, then the scheduler; each by PID
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        shutil.rmtree(dest / ".dask", ignore_errors=True)


def _on_dask(dest: Path, address: str, sections: tuple[str, ...]) -> str:
    """``params.yaml`` with ``sections`` running on the cluster at ``address``; returns the original text."""
    params_text = (dest / "params.yaml").read_text()
    params = yaml.safe_load(params_text)
    for section in sections:
        params[section].update(runner="dask", dask_address=address)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params_text


def _outputs(dest: Path, *folders: str, files: tuple[str, ...] = ()) -> dict[str, bytes]:
    paths = [p for folder in folders for p in (dest / folder).rglob("*") if p.is_file()]
    return {str(p.relative_to(dest)): p.read_bytes() for p in [*paths, *(dest / f for f in files)]}


def test_features_and_sample_on_a_dask_cluster_equal_the_thread_runner(project):
    """Per-session work on an existing Dask cluster (a scheduler and two workers, separate processes)."""
    pytest.importorskip("prefect_dask")
    from distributed import Client

    dest, env = project
    threads = _outputs(dest, "features", files=("samples/test.parquet",))  # the thread runner's (repro above)
    with _dask_cluster(dest, env, [[], []]) as (address, _):
        params_text = _on_dask(dest, address, ("features", "sample"))
        try:
            for stage in ("features", "sample"):
                _run([sys.executable, "-m", f"pipelines.{stage}"], dest, env)
        finally:
            (dest / "params.yaml").write_text(params_text)
        with Client(address, timeout=5) as client:  # the work ran on the cluster's two workers
            assert len(client.scheduler_info()["workers"]) == 2
    on_dask = _outputs(dest, "features", files=("samples/test.parquet",))
    differing = sorted(name for name in threads if on_dask.get(name) != threads[name])
    assert sorted(on_dask) == sorted(threads) and differing == [], differing


def test_a_dask_worker_killed_mid_task_loses_no_work(project):
    """A worker SIGKILLed while it runs a features task (tests/dask_dying_worker.py): its work moves to
    the surviving worker and the stage's outputs are byte-identical to the thread runner's."""
    pytest.importorskip("prefect_dask")
    dest, env = project
    threads = _outputs(dest, "features")
    dying = ["--no-nanny", "--preload", str(Path(__file__).with_name("dask_dying_worker.py"))]
    with _dask_cluster(dest, env, [[], dying]) as (address, workers):
        params_text = _on_dask(dest, address, ("features",))
        try:
            stage = [sys.executable, "-m", "pipelines.features"]
            proc = subprocess.run(stage, cwd=dest, env=env, capture_output=True, text=True, timeout=600)
        finally:
            (dest / "params.yaml").write_text(params_text)
        died = workers[1].poll()
    assert died == -signal.SIGKILL, "the dying worker got no task: the test did not test a death"
    log = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "KilledWorker" not in log, log
    assert proc.returncode == 0, log
    after = _outputs(dest, "features")
    differing = sorted(name for name in threads if after.get(name) != threads[name])
    assert sorted(after) == sorted(threads) and differing == [], differing
