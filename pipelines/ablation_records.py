"""The ablation campaigns' records in MLflow: a parent run per table, a child run per variant and seed,
their export to a file and import into another store, and reading them back for the report.

Experiment ``reactdiff-ablations``. A child run (named ``table2 / without h / seed 1``, tagged
``reactdiff.seed``) holds the full params, the windows and features it used as MLflow datasets (digest:
their hash in the experiment's ``dvc.lock``), every metric of ``evaluate`` (per coefficient subset), the
training curve as metric history, and the plots and reports as artifacts; it is tagged with the DVC
experiment name and revision and the git commit. The runner (:mod:`pipelines.ablations`) runs the DVC
experiments and hands their files here. Not in :mod:`pipelines.tracking`: every stage imports that, and
this module's use of :mod:`reactdiff.ablations` would make every stage depend on the report's code.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines import tracking
from reactdiff import atomic
from reactdiff.ablations import AblationTable, Variant, cost_columns, select_tables
from reactdiff.config import load_yaml

EXPERIMENT = "reactdiff-ablations"
COST = "cost."
"""Prefix of a variant run's cost metrics (Table 16's steps, params_M, GFLOPs, FPS), the same in every
coefficient subset."""
DATASETS = {"windows": "training", "features": "evaluation"}
"""The stage outputs a variant's model was trained on and its samples were scored on."""
EXPERIMENT_FILES = (
    "metrics/evaluate.json",
    "metrics/sample.json",
    "metrics/train.json",
    "plots/train_loss.csv",
    "reports/evaluate.md",
    "params.yaml",
    "dvc.lock",
)
"""The files of a variant's DVC experiment commit that its run is built from."""


def client():
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.MlflowClient()


def ablations_experiment_id(client) -> str:
    return tracking.experiment_id(client, EXPERIMENT)


def table_parent(
    client,
    experiment_id: str,
    table: AblationTable,
    campaign: str,
    base: Mapping[str, Any],
    sets: Mapping[str, Any],
) -> str:
    """The parent run of ``table`` in ``campaign``, created on first use."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`reactdiff.role` = 'table' and tags.`reactdiff.table` = '{table.name}' "
        f"and tags.`reactdiff.campaign` = '{campaign}'",
    )
    if found:
        return found[0].info.run_id
    tags = {
        "reactdiff.role": "table",
        "reactdiff.table": table.name,
        "reactdiff.campaign": campaign,
        "reactdiff.overrides": json.dumps(dict(sets), sort_keys=True),
        "git_commit": tracking.git_commit() or "",
        "mlflow.note.content": f"{table.title}: one child run per variant (campaign {campaign}).",
    }
    run = client.create_run(experiment_id, run_name=f"{table.name} · {campaign}", tags=tags)
    tracking.log_params({"campaign": campaign, **dict(base)}, run_id=run.info.run_id)
    tracking.log_datasets(DATASETS, run_id=run.info.run_id)  # the data the campaign starts from
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_seed(run) -> int | None:
    seed = run.data.tags.get("reactdiff.seed", run.data.params.get("seed"))
    return None if seed is None else int(seed)


def finished_variants(client, experiment_id: str, parent: str) -> set[tuple[str, int | None]]:
    """``{(variant label, seed)}`` recorded as finished child runs of the table run ``parent``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and attributes.status = 'FINISHED'",
        max_results=10_000,
    )
    return {(r.data.tags.get("reactdiff.variant", ""), run_seed(r)) for r in runs}


def _metric_batch(values: Mapping[str, float], step: int = 0, timestamp: int | None = None):
    from mlflow.entities import Metric

    ts = timestamp or int(time.time() * 1000)
    return [Metric(k, float(v), ts, step) for k, v in values.items() if v is not None and v == v]


def _log_metrics(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), 1000):  # MLflow caps a batch at 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def record_variant(
    client,
    experiment_id: str,
    parent: str,
    table: AblationTable,
    variant: Variant,
    campaign: str,
    exp_name: str,
    rev: str,
    seed: int,
    files: Mapping[str, str | None],
) -> str:
    """One child run for a finished experiment, from the files of its commit (:data:`EXPERIMENT_FILES`,
    ``None`` for one it lacks)."""
    if files["metrics/evaluate.json"] is None:
        raise RuntimeError(f"experiment {exp_name} ({rev[:7]}) has no metrics/evaluate.json: did it fail?")
    evaluation = json.loads(files["metrics/evaluate.json"])
    training = json.loads(files["metrics/train.json"] or "{}")
    params_text = files["params.yaml"]
    if params_text is None:
        raise RuntimeError(f"experiment {exp_name} ({rev[:7]}) has no params.yaml")
    params = tracking.flatten(load_yaml(params_text))
    tags = {
        "reactdiff.role": "variant",
        "reactdiff.table": table.name,
        "reactdiff.variant": str(variant.label),
        "reactdiff.seed": str(seed),
        "reactdiff.campaign": campaign,
        "mlflow.parentRunId": parent,
        "dvc_exp_name": exp_name,
        "dvc_exp_rev": rev,
        "git_commit": tracking.git_commit() or "",
    }
    run = client.create_run(
        experiment_id, run_name=f"{table.name} / {variant.label} / seed {seed}", tags=tags
    )
    run_id = run.info.run_id
    metrics = {f"{subset}.{k}": v for subset, values in evaluation.items() for k, v in values.items()}
    metrics |= {f"train.{k}": v for k, v in training.items() if isinstance(v, (int, float))}
    metrics |= {
        f"{COST}{k}": v for k, v in cost_columns(json.loads(files["metrics/sample.json"] or "{}")).items()
    }
    batch = _metric_batch(metrics)
    curve = files["plots/train_loss.csv"]
    if curve:
        now = int(time.time() * 1000)
        for row in csv.DictReader(io.StringIO(curve)):
            step = int(float(row["step"]))
            values = {
                f"train.curve.{k}": float(v) for k, v in row.items() if k != "step" and v not in ("", None)
            }
            batch += _metric_batch(values, step=step, timestamp=now)
    _log_metrics(client, run_id, batch)
    tracking.log_params(params, run_id=run_id)
    tracking.log_datasets(DATASETS, run_id=run_id, lock_text=files["dvc.lock"])
    with tempfile.TemporaryDirectory() as tmp:
        for path in ("plots/train_loss.csv", "reports/evaluate.md"):
            text = files[path]
            if text is not None:
                local = Path(tmp) / Path(path).name
                local.write_text(text)
                client.log_artifact(run_id, str(local), artifact_path=str(Path(path).parent))
        if curve:
            png = Path(tmp) / "train_loss.png"
            _plot_curve(curve, png, f"{table.title}: {variant.label}")
            client.log_artifact(run_id, str(png), artifact_path="plots")
    client.set_terminated(run_id)
    return run_id


# -- a campaign between stores ------------------------------------------------------------------------

EXPORT_FORMAT = "reactdiff-ablations-campaign/1"
CURVE_PREFIX = "train.curve."
IMPORTED_FROM = "reactdiff.imported_from"


def export_campaign(client, experiment_id: str, campaign: str) -> dict[str, Any]:
    """The table and variant runs of ``campaign`` as plain data: name, status, times, tags, params and
    metrics (the training curve with its history). Not the artifacts nor the dataset inputs: what the
    report and the resumption need, small enough to commit beside the report."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`reactdiff.campaign` = '{campaign}'", max_results=10_000
    )
    if not runs:
        raise SystemExit(f"no runs of campaign {campaign!r} in MLflow ({tracking.tracking_uri()})")
    records = []
    for run in sorted(runs, key=lambda r: (r.data.tags.get("reactdiff.role") != "table", r.info.start_time)):
        metrics = {k: [[0, v]] for k, v in run.data.metrics.items() if not k.startswith(CURVE_PREFIX)}
        for key in sorted(k for k in run.data.metrics if k.startswith(CURVE_PREFIX)):
            history = client.get_metric_history(run.info.run_id, key)
            metrics[key] = [[m.step, m.value] for m in sorted(history, key=lambda m: m.step)]
        records.append(
            {
                "run_id": run.info.run_id,
                "name": run.info.run_name,
                "status": run.info.status,
                "start_time": run.info.start_time,
                "end_time": run.info.end_time,
                "tags": {k: v for k, v in run.data.tags.items() if k != "mlflow.runName"},
                "params": dict(run.data.params),
                "metrics": metrics,
            }
        )
    return {"format": EXPORT_FORMAT, "experiment": EXPERIMENT, "campaign": campaign, "runs": records}


def write_export(client, experiment_id: str, campaign: str, out: Path) -> None:
    exported = export_campaign(client, experiment_id, campaign)
    with atomic.atomic_path(out) as tmp:  # mtime 0: the same runs give the same bytes
        tmp.write_bytes(gzip.compress(json.dumps(exported, sort_keys=True).encode(), mtime=0))
    print(f"[ablations] {len(exported['runs'])} runs of {campaign} -> {out}")


def import_campaign(client, experiment_id: str, exported: Mapping[str, Any]) -> int:
    """Recreate an :func:`export_campaign` in this store, parents first; returns the runs created.

    Runs already here (the same run, or one imported from it before) are skipped, so importing twice, or
    into the store the campaign came from, adds nothing; a campaign then resumes with ``run``.
    """
    from mlflow.entities import Metric, Param, RunTag

    if exported.get("format") != EXPORT_FORMAT:
        raise SystemExit(
            f"not an ablation campaign export ({EXPORT_FORMAT}): format {exported.get('format')!r}"
        )
    here = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`reactdiff.campaign` = '{exported['campaign']}'",
        max_results=10_000,
    )
    ids = {r.data.tags.get(IMPORTED_FROM, r.info.run_id): r.info.run_id for r in here}
    created = 0
    for record in exported["runs"]:
        if record["run_id"] in ids:
            continue
        tags = dict(record["tags"])
        if "mlflow.parentRunId" in tags:
            tags["mlflow.parentRunId"] = ids.get(tags["mlflow.parentRunId"], tags["mlflow.parentRunId"])
        tags[IMPORTED_FROM] = record["run_id"]
        run = client.create_run(
            experiment_id, start_time=record["start_time"], tags=tags, run_name=record["name"]
        )
        run_id = ids[record["run_id"]] = run.info.run_id
        stamp = record["start_time"] or int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, step) for k, points in record["metrics"].items() for step, v in points]
        params = [Param(k, v) for k, v in record["params"].items()]
        for i in range(0, max(len(metrics), len(params)), 100):  # MLflow caps params at 100 per batch
            client.log_batch(run_id, metrics=metrics[i : i + 100], params=params[i : i + 100])
        client.log_batch(run_id, tags=[RunTag(IMPORTED_FROM, record["run_id"])])
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
        created += 1
    return created


def _plot_curve(curve_csv: str, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(io.StringIO(curve_csv))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for column in frame.columns.drop("step"):
        series = frame[["step", column]].dropna()
        ax.plot(series["step"], series[column], label=column)
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def latest_campaign(client, experiment_id: str) -> str:
    runs = client.search_runs(
        [experiment_id],
        filter_string="tags.`reactdiff.role` = 'table'",
        order_by=["attributes.start_time DESC"],
    )
    if not runs:
        raise SystemExit(f"no ablation runs in MLflow ({tracking.tracking_uri()}): run the tables first")
    return runs[0].data.tags["reactdiff.campaign"]


def load_records(
    client, experiment_id: str, campaigns: Sequence[str], subset: str
) -> tuple[dict[str, dict[Any, list[dict[str, float]]]], dict[str, list[str]]]:
    """Metrics of ``subset`` per table, variant and seed from the variant runs of ``campaigns`` in MLflow.

    Returns ``({table: {variant label: [metrics of each seed]}}, {table: [campaigns that provided its
    rows]})``, seeds in increasing order. A variant and seed recorded by several of the campaigns takes
    the record of the last campaign listed (and of the latest run within it).
    """
    labels = {(t.name, str(v.label)): v.label for t in select_tables(None) for v in t.variants}
    by_seed: dict[str, dict[Any, dict[int | None, dict[str, float]]]] = {}
    sources: dict[str, list[str]] = {}
    prefix = f"{subset}."
    for campaign in campaigns:
        runs = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`reactdiff.role` = 'variant' and tags.`reactdiff.campaign` = '{campaign}'",
            max_results=10_000,
        )
        for run in sorted(runs, key=lambda r: r.info.start_time):
            table = run.data.tags["reactdiff.table"]
            label = labels.get((table, run.data.tags["reactdiff.variant"]))
            if label is None:
                continue
            metrics = {
                k[len(key) :]: v
                for k, v in run.data.metrics.items()
                for key in (prefix, COST)
                if k.startswith(key)
            }
            by_seed.setdefault(table, {}).setdefault(label, {})[run_seed(run)] = metrics
            if campaign not in sources.setdefault(table, []):
                sources[table].append(campaign)
    records = {
        table: {
            label: [seeds[s] for s in sorted(seeds, key=lambda s: -1 if s is None else s)]
            for label, seeds in rows.items()
        }
        for table, rows in by_seed.items()
    }
    return records, sources


def campaign_overrides(client, experiment_id: str, campaign: str) -> dict[str, Any]:
    """The ``--set`` overrides a campaign ran with (from its table parent runs)."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`reactdiff.role` = 'table' and tags.`reactdiff.campaign` = '{campaign}'",
    )
    for run in runs:
        if "reactdiff.overrides" in run.data.tags:
            return json.loads(run.data.tags["reactdiff.overrides"])
    return {}
