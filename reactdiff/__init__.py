"""ReactDiff: online multiple appropriate facial reaction generation with temporal diffusion.

Importing the package switches off telemetry and hub access for every library it drives (Prefect,
MLflow, DVC, Hugging Face), unless the user has set these variables explicitly: the pipeline must run
offline and never phone home.
"""

from __future__ import annotations

import os

_OFFLINE_DEFAULTS = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
for _key, _value in _OFFLINE_DEFAULTS.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
