"""Thin DVC stage entry points (``python -m pipelines.<stage>``) and the Prefect flows they run."""

import reactdiff  # noqa: F401  (sets the offline/telemetry defaults before Prefect or MLflow import)
