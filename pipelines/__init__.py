"""Thin DVC stage entry points (``python -m pipelines.<stage>``) and the Prefect flows they run."""

import os

import reactdiff  # noqa: F401  (sets the offline/telemetry defaults before Prefect or MLflow import)

# One "task finished" line per session would bury the progress bar; flow-level messages stay.
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_TASK_RUNS_LEVEL", "WARNING")
