"""DVC stage ``sample``: M reactions for every conversation of a split, generated online window by window.

One Prefect task per session (both directions of its dyad). Each example's seed is derived from the
global ``seed`` and the example's identity, so reruns reproduce the same reactions whatever order the
tasks run in. Finished sessions are kept in ``checkpoints/sample-<fingerprint>/`` while the stage runs,
so an interrupted run resumes without redoing them; the output is assembled and written atomically.

Output ``samples/<split>.parquet`` (one row per example, sample and frame)::

    session string, example int32, speaker string, listener string, sample int16, frame int32,
    coeffs fixed_size_list<float32>[58]   (FaceVerse units)

plus ``samples/summary.json`` and ``samples/mlflow_run.json`` (a child of the training run, which
``evaluate`` logs into).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import flow, task
from prefect.cache_policies import NONE

from pipelines import tracking
from pipelines.flows import StageTimer, gather, make_task_runner, worker_count
from reactdiff import io
from reactdiff.config import Params, load_params
from reactdiff.features import EXAMPLES_FILE, FRAMES_FILE, STATS_FILE, NormStats, read_frames
from reactdiff.online import OnlineReactionGenerator, derive_seed, generate_clip
from reactdiff.training import load_denoiser, select_device

FEATURES = Path("features")
MODEL = Path("models/reactdiff.pt")
OUT = Path("samples")
SCRATCH = Path("checkpoints")
RUN_FILE = OUT / "mlflow_run.json"


def output_path(split: str) -> Path:
    return OUT / f"{split}.parquet"


def fingerprint(params: Params) -> str:
    """Everything the generated reactions depend on: model, features of the split, sampling params."""
    digest = hashlib.sha256()
    for path in (MODEL, FEATURES / params.sample.split / FRAMES_FILE, FEATURES / STATS_FILE):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    settings = {
        "seed": params.seed,
        "sample": params.sample.model_dump(),
        "windows": params.windows.model_dump(),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def _model(device: str):
    return load_denoiser(MODEL, device=select_device(device), use_ema=True)


@lru_cache(maxsize=1)
def _frames(split: str):
    return read_frames(FEATURES / split / FRAMES_FILE)


def reactions_table(session: str, example: dict, reactions: np.ndarray) -> pa.Table:
    """``reactions [M, T, 58]`` of one example as rows of the output schema."""
    m, t, d = reactions.shape
    values = pa.array(np.ascontiguousarray(reactions, np.float32).reshape(-1))
    return pa.table(
        {
            "session": pa.array([session] * (m * t), pa.string()),
            "example": pa.array(np.full(m * t, example["example"], np.int32)),
            "speaker": pa.array([example["speaker"]] * (m * t), pa.string()),
            "listener": pa.array([example["listener"]] * (m * t), pa.string()),
            "sample": pa.array(np.repeat(np.arange(m, dtype=np.int16), t)),
            "frame": pa.array(np.tile(np.arange(t, dtype=np.int32), m)),
            "coeffs": pa.FixedSizeListArray.from_arrays(values, d),
        }
    )


@task(name="sample-session", cache_policy=NONE)
def sample_session(session: str, examples: list[dict], params: Params, scratch: str) -> dict:
    target = Path(scratch) / f"{session.replace('/', '__')}.parquet"
    if target.exists():  # finished by an earlier, interrupted run of the same fingerprint
        return {"session": session, "windows": 0, "seconds": 0.0, "resumed": True}
    cfg = params.sample
    stats = NormStats.load(FEATURES / STATS_FILE)
    clips = _frames(cfg.split)
    generator = OnlineReactionGenerator(
        _model(cfg.device),
        stats,
        window=params.windows.size,
        samples=cfg.samples,
        steps=cfg.steps,
        solver=cfg.solver,
        eta=cfg.eta,
        guidance_scale=cfg.guidance_scale,
        initial_past=params.windows.initial_past,
    )
    tables, windows, started = [], 0, time.perf_counter()
    for example in examples:
        speaker, listener = clips[example["speaker"]], clips[example["listener"]]
        n = min(len(speaker.face), len(listener.face))
        start = listener.face[0] if params.windows.initial_past == "first_frame" else None
        seed = derive_seed(params.seed, f"{cfg.split}|{example['speaker']}|{example['listener']}")
        reactions = generate_clip(generator, speaker.face[:n], speaker.audio[:n], start, seed=seed)
        tables.append(reactions_table(session, example, reactions))
        windows += -(-n // params.windows.size)
    io.write_parquet(pa.concat_tables(tables), target)
    return {
        "session": session,
        "windows": windows,
        "seconds": time.perf_counter() - started,
        "resumed": False,
    }


@flow(name="sample", log_prints=True)
def sample_flow(params: Params, scratch: Path) -> list[dict]:
    examples = [
        e for e in pq.read_table(FEATURES / params.sample.split / EXAMPLES_FILE).to_pylist() if e["usable"]
    ]
    by_session: dict[str, list[dict]] = {}
    for example in examples:
        by_session.setdefault(example["session"], []).append(example)
    futures = [
        sample_session.submit(session, exs, params, str(scratch))
        for session, exs in sorted(by_session.items())
    ]
    return gather(futures, desc=f"sample {params.sample.split}")


def main() -> None:
    timer = StageTimer("sample")
    params = load_params()
    cfg = params.sample
    workers = worker_count(cfg.workers)
    # Sessions run in parallel threads; give each its share of the cores instead of oversubscribing.
    torch.set_num_threads(max(1, worker_count(0) // workers))
    scratch = SCRATCH / f"sample-{fingerprint(params)}"
    scratch.mkdir(parents=True, exist_ok=True)
    print(
        f"[sample] {cfg.split}: M={cfg.samples}, {cfg.steps} steps, {cfg.solver} (eta {cfg.eta}), "
        f"guidance {cfg.guidance_scale}, {workers} {cfg.runner} workers; resuming from {scratch} if present"
    )
    results = sample_flow.with_options(task_runner=make_task_runner(cfg.runner, workers))(params, scratch)
    parts = sorted(scratch.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    io.write_parquet(table, output_path(cfg.split))

    generated = [r for r in results if not r["resumed"]]
    windows = sum(r["windows"] for r in generated)
    seconds = sum(r["seconds"] for r in generated)
    ms_per_window = 1000 * seconds / windows if windows else None
    examples = len(set(table.column("example").to_pylist()))
    frames = table.num_rows // max(cfg.samples, 1)
    summary = {
        "split": cfg.split,
        "sessions": len(parts),
        "examples": examples,
        "samples": cfg.samples,
        "frames": frames,
        "sessions_resumed": len(results) - len(generated),
        "ms_per_window": ms_per_window,
        "window_fps": params.windows.size / (ms_per_window / 1000) if ms_per_window else None,
    }
    io.write_json(summary, OUT / "summary.json")

    import mlflow

    parent = tracking.read_run_id()
    with tracking.start_run("sample", parent_run_id=parent, run_name=f"sample-{cfg.solver}-{cfg.steps}"):
        tracking.log_params({"seed": params.seed, "sample": cfg.model_dump()})
        mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
        tracking.write_run_file(mlflow.active_run().info.run_id, RUN_FILE, parent_run_id=parent)
    shutil.rmtree(scratch)
    timer.done(
        read=f"{MODEL}, {FEATURES}/{cfg.split}",
        wrote=f"{output_path(cfg.split)} ({examples} examples x {cfg.samples} samples x "
        f"{frames // max(examples, 1)} frames; {ms_per_window and round(ms_per_window, 1)} ms per window)",
    )


if __name__ == "__main__":
    main()
