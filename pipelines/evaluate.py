"""DVC stage ``evaluate``: the REACT metrics of the generated reactions, beside the baselines.

Scores with the learned realism feature of the ``realism_encoder`` stage (``FD_learned``). Writes
``metrics/evaluate.json`` (DVC metrics: the model's scores per coefficient subset, shown by
``dvc metrics show`` and ``dvc exp show``), ``reports/evaluate.csv`` and ``reports/evaluate.md`` (model
and every baseline, per subset; rows: the model, then the baselines in
:data:`reactdiff.evaluation.BASELINE_ORDER`) and logs the metrics to the sampling run in MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipelines import tracking
from pipelines.flows import StageTimer, run_stage, worker_count
from reactdiff import atomic
from reactdiff.config import load_params
from reactdiff.evaluation import (
    generated_reactions,
    load_split,
    markdown_table,
    ordered_baselines,
    results_table,
    score,
)
from reactdiff.realism import load_encoder

FEATURES = Path("features")
SAMPLES = Path("samples")
BASELINES = Path("metrics/baselines.json")
REALISM_ENCODER = Path("models_realism/encoder.pt")
METRICS = Path("metrics/evaluate.json")
REPORT = Path("reports")
MODEL_ROW = "ReactDiff"


def main() -> None:
    timer = StageTimer("evaluate")
    params = load_params()
    split = load_split(FEATURES / params.sample.split)
    P = generated_reactions(SAMPLES / f"{params.sample.split}.parquet", split)
    encoder = load_encoder(REALISM_ENCODER, device=params.realism.device)
    model = score(P, split, seed=params.seed, workers=min(2, worker_count(0)), realism_encoder=encoder)
    atomic.write_json(model, METRICS, sort_keys=False)  # the headline metrics first (dvc exp show)

    results = {MODEL_ROW: model, **ordered_baselines(json.loads(BASELINES.read_text()))}
    table = results_table(results)
    atomic.write_text(table.to_csv(index=False), REPORT / "evaluate.csv")
    markdown = "".join(
        f"### {subset} coefficients\n\n{markdown_table(table, subset)}\n"
        for subset in ("all", "expression", "pose")
    )
    atomic.write_text(markdown, REPORT / "evaluate.md")

    import mlflow

    with tracking.start_run("evaluate", run_id=tracking.read_run_id(SAMPLES / "mlflow_run.json")):
        mlflow.log_metrics(
            {f"{subset}.{k}": float(v) for subset, m in model.items() for k, v in m.items() if np.isfinite(v)}
        )
        mlflow.log_artifact(str(REPORT / "evaluate.md"))
        mlflow.log_artifact(str(REPORT / "evaluate.csv"))
    headline = ", ".join(f"{k} {model['all'][k]:.4g}" for k in ("FRCorr", "FRDist", "FRDiv", "FRSyn"))
    timer.done(
        read=f"{SAMPLES}/, {FEATURES}/{params.sample.split}, {BASELINES}, {REALISM_ENCODER}",
        wrote=f"{METRICS} ({headline}), {REPORT}/",
    )
    print(markdown_table(table, "all"))


if __name__ == "__main__":
    run_stage(main, "evaluate")
