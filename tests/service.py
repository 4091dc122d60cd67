"""The live listener service for real, in a process of its own, for the tests that need a socket."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch


@contextlib.contextmanager
def real_service(tmp_path, denoiser, stats, *extra: str):
    """``python -m reactdiff.serve`` on a free loopback port with ``denoiser`` saved as a checkpoint;
    yields ``(process, port)`` once it answers, and stops it by its PID, whatever happens."""
    import socket
    import subprocess
    import sys

    import httpx

    from reactdiff.training import CHECKPOINT_FORMAT

    model = tmp_path / "model.pt"
    state = denoiser.state_dict()
    network = {"network": denoiser.config.to_dict(), "sigma_data": denoiser.sigma_data}
    torch.save({"format": CHECKPOINT_FORMAT, "model_args": network, "ema": state, "model": state}, model)
    (tmp_path / "stats.json").write_text(json.dumps(stats.to_json()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--model", str(model), "--stats", str(tmp_path / "stats.json"), "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "reactdiff.serve", *args, "--device", "cpu", *extra], cwd=tmp_path, env=env
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
                time.sleep(0.5)
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=20)
