"""DVC stage ``sample``: M reactions for every conversation of a split, generated online window by window.

One Prefect task per group of whole sessions (both directions of each dyad; up to
``sample.batch_examples`` examples per group, generated in lockstep as one denoiser batch, which is
several times faster on a CPU than one example at a time). Each example's seed is derived from the global
``seed`` and the example's identity and drives its own noise generator, so reruns reproduce the same
reactions whatever order the tasks run in. Finished groups are kept in
``checkpoints/sample-<fingerprint>/`` while the stage runs, so an interrupted run resumes without redoing
them; the output is assembled and written atomically.

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
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from prefect import flow, task
from prefect.cache_policies import NONE

from pipelines import tracking
from pipelines.flows import StageTimer, gather, make_task_runner, run_stage, worker_count
from reactdiff import atomic
from reactdiff.config import Params, load_params
from reactdiff.devices import select_device
from reactdiff.features import EXAMPLES_FILE, FRAMES_FILE, STATS_FILE, NormStats, read_frames
from reactdiff.model import count_parameters
from reactdiff.online import OnlineReactionGenerator, derive_seed, generate_clips
from reactdiff.speed import online_speed
from reactdiff.training import load_checkpoint, load_denoiser

FEATURES = Path("features")
MODELS = Path("models")
"""``models/teacher`` (the train stage's) and ``models/student`` (distill's), each holding the network
(``reactdiff.pt``) and the MLflow run its samples are logged as children of (``mlflow_run.json``)."""
MODEL_FILE, RUN_FILE_NAME = "reactdiff.pt", "mlflow_run.json"


def model_path(which: str) -> Path:
    return MODELS / which / MODEL_FILE


OUT = Path("samples")
METRICS = Path("metrics/sample.json")
SCRATCH = Path("checkpoints")
RUN_FILE = OUT / "mlflow_run.json"


def output_path(split: str) -> Path:
    return OUT / f"{split}.parquet"


def fingerprint(params: Params) -> str:
    """Everything the generated reactions depend on: model, features of the split, sampling params."""
    digest = hashlib.sha256()
    model = model_path(params.sample.model)
    for path in (model, FEATURES / params.sample.split / FRAMES_FILE, FEATURES / STATS_FILE):
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    settings = {
        "seed": params.seed,
        "sample": params.sample.model_dump(),
        "windows": params.windows.model_dump(),
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def example_seeds(seed: int, split: str, examples: Sequence[Mapping[str, str]]) -> list[int]:
    """The noise seed of each example: the run's ``seed`` and the example's identity, nothing else."""
    return [derive_seed(seed, f"{split}|{e['speaker']}|{e['listener']}") for e in examples]


@lru_cache(maxsize=1)
def _model(which: str, device: str, precision: str):
    model = load_denoiser(model_path(which), device=select_device(device), use_ema=True, precision=precision)
    print(f"[sample] the {which} computes in {str(model.network.dtype).removeprefix('torch.')}", flush=True)
    return model


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


def session_groups(examples: list[dict], per_group: int) -> list[list[dict]]:
    """Whole sessions, in sorted order, packed into groups of at most ``per_group`` examples.

    A session larger than ``per_group`` forms a group of its own. The grouping depends only on the
    examples and ``per_group`` (part of the stage fingerprint), so a resumed run finds the same groups.
    """
    by_session: dict[str, list[dict]] = {}
    for example in examples:
        by_session.setdefault(example["session"], []).append(example)
    groups: list[list[dict]] = []
    for _, session_examples in sorted(by_session.items()):
        if groups and len(groups[-1]) + len(session_examples) <= per_group:
            groups[-1].extend(session_examples)
        else:
            groups.append(list(session_examples))
    return groups


@task(name="sample-sessions", cache_policy=NONE)
def sample_group(index: int, examples: list[dict], params: Params, scratch: str, threads: int) -> dict:
    target = Path(scratch) / f"group-{index:05d}.parquet"
    sessions = sorted({e["session"] for e in examples})
    if target.exists():  # finished by an earlier, interrupted run of the same fingerprint
        return {"sessions": sessions, "windows": 0, "seconds": 0.0, "resumed": True}
    # The task's own share of the cores, wherever it runs (a thread here, a Dask worker elsewhere): the
    # same thread count gives the same float reductions, so every runner writes the same reactions.
    torch.set_num_threads(threads)
    cfg, w = params.sample, params.windows.size
    stats = NormStats.load(FEATURES / STATS_FILE)
    clips = _frames(cfg.split)
    by_length: dict[int, list[dict]] = {}
    for example in examples:
        n = min(len(clips[example["speaker"]].face), len(clips[example["listener"]].face))
        by_length.setdefault(n, []).append(example)
    tables, windows, started = [], 0, time.perf_counter()
    for n, batch in sorted(by_length.items()):
        generator = OnlineReactionGenerator(
            _model(cfg.model, cfg.device, cfg.precision),
            stats,
            window=w,
            samples=cfg.samples,
            initial_past=params.windows.initial_past,
            streams=len(batch),
            **cfg.recipe(),
        )
        speakers = [clips[e["speaker"]] for e in batch]
        listeners = [clips[e["listener"]] for e in batch]
        reactions = generate_clips(
            generator,
            np.stack([c.face[:n] for c in speakers]),
            np.stack([c.audio[:n] for c in speakers]),
            np.stack([c.face[0] for c in listeners]),
            example_seeds(params.seed, cfg.split, batch),
        )
        tables += [reactions_table(e["session"], e, r) for e, r in zip(batch, reactions, strict=True)]
        windows += len(batch) * -(-n // w)
    atomic.write_parquet(pa.concat_tables(tables), target)
    return {
        "sessions": sessions,
        "windows": windows,
        "seconds": time.perf_counter() - started,
        "resumed": False,
    }


@flow(name="sample", log_prints=True)
def sample_flow(params: Params, groups: list[list[dict]], scratch: Path, threads: int) -> list[dict]:
    futures = [sample_group.submit(i, group, params, str(scratch), threads) for i, group in enumerate(groups)]
    return gather(futures, desc=f"sample {params.sample.split}")


def speed(params: Params, examples: list[dict], windows: int = 4) -> dict[str, float]:
    """The chosen model's cost per window online (one conversation, M samples): FLOPs and latency here.

    Measured in this process after the groups have finished, on the first speaker clip long enough."""
    cfg, w = params.sample, params.windows.size
    clips = _frames(cfg.split)
    speaker = next(
        (clips[e["speaker"]] for e in examples if len(clips[e["speaker"]].face) >= (windows + 2) * w), None
    )
    if speaker is None:
        return {}
    model = _model(cfg.model, cfg.device, cfg.precision)
    cost = online_speed(
        model,
        NormStats.load(FEATURES / STATS_FILE),
        speaker.face,
        speaker.audio,
        window=w,
        samples=cfg.samples,
        windows=windows,
        initial_past=params.windows.initial_past,
        **cfg.recipe(),
    )
    return {"parameters": count_parameters(model), **cost}


def usable_examples(split: str) -> list[dict]:
    return [e for e in pq.read_table(FEATURES / split / EXAMPLES_FILE).to_pylist() if e["usable"]]


def main() -> None:
    timer = StageTimer("sample")
    params = load_params()
    cfg = params.sample
    model = model_path(cfg.model)
    # Once, before any task: a bad checkpoint or an absent device is reported once, not once per task.
    load_checkpoint(model)
    select_device(cfg.device)
    usable = usable_examples(cfg.split)
    groups = session_groups(usable, cfg.batch_examples)
    workers = min(worker_count(cfg.workers), len(groups))
    # Groups run in parallel; each gets its share of the cores instead of oversubscribing.
    threads = max(1, worker_count(0) // workers)
    scratch = SCRATCH / f"sample-{fingerprint(params)}"
    scratch.mkdir(parents=True, exist_ok=True)
    recipe = cfg.recipe()
    print(
        f"[sample] {cfg.split}: {cfg.model} {model}, M={cfg.samples}, {recipe['steps']} steps, "
        f"{recipe['solver']} (eta {cfg.eta}), guidance {recipe['guidance_scale']} at sigma in "
        f"{recipe['guidance_interval'] or 'all levels'}, {len(groups)} "
        f"groups of <= {cfg.batch_examples} examples, {workers} {cfg.runner} workers; resuming from "
        f"{scratch} if present"
    )
    runner = make_task_runner(cfg.runner, workers, cfg.dask_address)
    results = sample_flow.with_options(task_runner=runner)(params, groups, scratch, threads)
    parts = sorted(scratch.glob("*.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    generated = [r for r in results if not r["resumed"]]
    windows = sum(r["windows"] for r in generated)
    seconds = sum(r["seconds"] for r in generated)
    ms_per_window = 1000 * seconds / windows if windows else None
    examples = len(set(table.column("example").to_pylist()))
    frames = table.num_rows // max(cfg.samples, 1)
    summary = {
        "split": cfg.split,
        "sessions": len(set(table.column("session").to_pylist())),
        "examples": examples,
        "samples": cfg.samples,
        "frames": frames,
        "sessions_resumed": sum(len(r["sessions"]) for r in results if r["resumed"]),
        "ms_per_window": ms_per_window,
        "window_fps": params.windows.size / (ms_per_window / 1000) if ms_per_window else None,
    }
    # What the variant costs as a live listener (Table 16's columns), beside what it generated.
    cost = {
        "model": cfg.model,
        "steps": recipe["steps"],
        "solver": recipe["solver"],
        "guidance_scale": recipe["guidance_scale"],
        "samples": cfg.samples,
        **speed(params, usable),
    }

    import mlflow

    # The reactions, their summary and the MLflow run they are logged in change together or not at all
    # (evaluate and render log into the run named in mlflow_run.json).
    with atomic.atomic_dir(OUT) as out:
        atomic.write_parquet(table, out / output_path(cfg.split).name)
        atomic.write_json(summary, out / "summary.json")
        parent = tracking.read_run_id(MODELS / cfg.model / RUN_FILE_NAME)
        detail = f"{cfg.model}-{recipe['solver']}-{recipe['steps']}"
        with tracking.start_run("sample", detail=detail, seed=params.seed, parent_run_id=parent):
            tracking.log_params({"seed": params.seed, "sample": cfg.model_dump()})
            tracking.log_datasets({str(FEATURES): "evaluation"})
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            mlflow.log_metrics({f"online.{k}": float(v) for k, v in cost.items() if isinstance(v, float)})
            run_id = tracking.active_run_id()
            tracking.write_run_file(run_id, out / RUN_FILE.name, parent_run_id=parent)
    atomic.write_json(cost, METRICS)
    shutil.rmtree(scratch)
    online = f"online {cost['fps']:.1f} frames/s" if "fps" in cost else "online speed not measured"
    timer.done(
        read=f"{model}, {FEATURES}/{cfg.split}",
        wrote=f"{output_path(cfg.split)} ({examples} examples x {cfg.samples} samples x "
        f"{frames // max(examples, 1)} frames; {ms_per_window and round(ms_per_window, 1)} ms per window "
        f"batched, {online}), {METRICS}",
    )


if __name__ == "__main__":
    # Run the module under its import name, not as __main__: a Dask worker (another process, another
    # __main__) finds the tasks and their cached helpers by that name when it unpickles them.
    from pipelines import sample as stage

    run_stage(stage.main, "sample")
