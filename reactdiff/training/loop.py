"""The training loop and the validation loss."""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reactdiff.devices import select_device
from reactdiff.losses import LossConfig, training_loss
from reactdiff.model import (
    Denoiser,
    build_denoiser,
    count_parameters,
)
from reactdiff.training.checkpointing import (
    _model_args,
    _restore_rng_state,
    _rng_state,
    load_checkpoint,
    save_checkpoint,
)
from reactdiff.training.config import (
    _DROPOUT,
    _NOISE,
    _ROLLOUT,
    _VALIDATION,
    TrainConfig,
    WindowSource,
    _accumulator_dtype,
    _plain,
    _seed_for,
    config_fingerprint,
)
from reactdiff.training.data import _WindowSampler, evenly_spaced, fit_prior, rollout_past, to_model_inputs
from reactdiff.training.distributed import DistInfo, _barrier, ddp_context, dist_info
from reactdiff.training.ema import EMA
from reactdiff.windows import WindowBatch

# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _autocast(device: torch.device, cfg: TrainConfig) -> tuple[contextlib.AbstractContextManager, bool]:
    """Autocast context for the forward pass, and whether it is fp16 (which needs a grad scaler)."""
    if not (cfg.amp and device.type == "cuda"):
        return contextlib.nullcontext(), False
    dtype = torch.bfloat16
    if cfg.amp_dtype == "fp16" or (cfg.amp_dtype == "auto" and not torch.cuda.is_bf16_supported()):
        dtype = torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype), dtype == torch.float16


@torch.no_grad()
def validation_loss(
    denoiser: nn.Module,
    data: WindowSource,
    loss_cfg: LossConfig,
    *,
    batch_size: int,
    batches: int,
    seed: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    info: DistInfo | None = None,
) -> dict[str, float]:
    """Mean eq.-10 terms ``{"val_loss", "val_dm", "val_fbk", "val_fac"}`` on a fixed validation subset.

    The subset is ``min(len(data), batch_size * batches)`` windows evenly spaced over the split, cut into
    chunks of ``batch_size // world_size``; chunk ``j`` uses noise seeded from ``(seed, j)`` and runs on
    rank ``j % world_size``, so within a run every evaluation sees the same windows and the same noise and
    the values are comparable across steps. Averages are weighted by chunk size and all-reduced under DDP.
    """
    info = info or DistInfo()
    if min(len(data), batch_size * batches) == 0:
        return {}
    indices = evenly_spaced(len(data), batch_size * batches)
    chunk = max(batch_size // info.world_size, 1)
    was_training = denoiser.training
    denoiser.eval()
    acc = _accumulator_dtype(device)
    sums = torch.zeros(5, dtype=acc, device=device)  # loss, dm, fbk, fac, count
    gen = torch.Generator()
    for j, start in enumerate(range(0, len(indices), chunk)):
        if j % info.world_size != info.rank:
            continue
        x0, cond = to_model_inputs(data.batch(indices[start : start + chunk]), device)
        gen.manual_seed(_seed_for(seed, _VALIDATION, j))
        with autocast or contextlib.nullcontext():
            terms = training_loss(denoiser, x0, cond, loss_cfg, gen)
        b = x0.shape[0]
        values = [terms[k].detach().to(acc) * b for k in ("loss", "dm", "fbk", "fac")]
        sums += torch.stack([*values, torch.tensor(float(b), dtype=acc, device=device)])
    denoiser.train(was_training)
    if info.distributed:
        dist.all_reduce(sums)
    total = sums[4].item()
    return {f"val_{k}": (sums[i] / total).item() for i, k in enumerate(("loss", "dm", "fbk", "fac"))}


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` did.

    ``history``: one dict per logged step (``step``, ``loss``, ``dm``, ``fbk``, ``fac`` averaged over the
    steps since the previous log and over ranks, ``lr``, ``grad_norm`` (mean pre-clipping norm),
    ``windows_per_s`` (global windows per wall-clock second)); ``val``: one dict per validation
    (``step``, ``val_loss``, ``val_dm``, ``val_fbk``, ``val_fac``); ``resumed_from``: the step the run
    continued from (0 for a fresh start); ``checkpoint``: the final checkpoint (EMA weights for sampling);
    ``model`` / ``ema``: the trained denoiser (unwrapped from DDP) and its EMA, as this process holds them.
    """

    history: list[dict[str, float]]
    val: list[dict[str, float]]
    final_step: int
    parameters: int
    checkpoint: Path
    seconds: float
    resumed_from: int = 0
    fingerprint: str = ""
    device: str = "cpu"
    world_size: int = 1
    model: Denoiser | None = field(default=None, repr=False)
    ema: EMA | None = field(default=None, repr=False)


class _Prefetcher:
    """Gathers the next step's windows on a worker thread while the accelerator computes this step."""

    def __init__(self, fetch: Callable[[int], WindowBatch], enabled: bool) -> None:
        self.fetch = fetch
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: dict[int, Future] = {}

    def get(self, step: int, last: int) -> WindowBatch:
        future = self.pending.pop(step, None)
        batch = future.result() if future is not None else self.fetch(step)
        if self.pool is not None and step + 1 < last:
            self.pending[step + 1] = self.pool.submit(self.fetch, step + 1)
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _say(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(f"train: {message}", flush=True)


def _resume_state(
    path: Path, fingerprint: str, steps: int, resume: bool, info: DistInfo
) -> dict[str, Any] | None:
    """The checkpoint to continue from, or ``None`` (with the reason printed) to start fresh."""
    if not resume or not path.exists():
        return None
    try:
        ckpt = load_checkpoint(path)
    except Exception as exc:  # an unreadable file must not stop a fresh run from replacing it
        _say(info, f"cannot read {path} ({type(exc).__name__}: {exc}); starting fresh")
        return None
    if ckpt.get("config_fingerprint") != fingerprint:
        _say(
            info,
            f"{path} was written by another configuration (fingerprint {ckpt.get('config_fingerprint')} "
            f"!= {fingerprint}); starting fresh",
        )
        return None
    if ckpt["step"] > steps:
        _say(info, f"{path} is at step {ckpt['step']}, beyond the {steps} steps asked for; starting fresh")
        return None
    return ckpt


def train(
    cfg: TrainConfig,
    train_data: WindowSource,
    val_data: WindowSource | None,
    checkpoint_path: Path | str,
    *,
    log: Callable[[dict[str, float], int], None] | None = None,
    resume: bool = True,
    data_id: str | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a ReactDiff denoiser on ``train_data`` for ``cfg.steps`` steps, checkpointing to a file.

    ``train_data`` / ``val_data``: :class:`reactdiff.windows.WindowDataset` (or anything with ``w``,
    ``audio_dim``, ``__len__`` and ``batch(indices) -> WindowBatch``). ``log(metrics, step)`` receives the
    averaged training metrics every ``cfg.log_every`` steps and the validation metrics, on rank 0 only.
    With ``resume`` and an existing checkpoint of the same fingerprint (:func:`config_fingerprint` of
    ``cfg``, the audio size and ``data_id``, which defaults to the data's window count and size) training
    continues from its step; otherwise it starts fresh and says why. ``extra`` is stored in every
    checkpoint (plain values only). Under ``torchrun`` (``WORLD_SIZE > 1``) the network is wrapped in
    DistributedDataParallel, each rank trains on its slice of the global batch and only rank 0 writes
    the checkpoint and logs; every rank returns the same weights.
    """
    started = time.perf_counter()
    checkpoint_path = Path(checkpoint_path)
    env = dist_info()
    device = select_device(cfg.device)
    if env.distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)

    with ddp_context(device) as info:
        if cfg.batch_size < info.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the world size {info.world_size}")
        per_rank = cfg.batch_size // info.world_size
        global_batch = per_rank * info.world_size
        if global_batch != cfg.batch_size:
            _say(
                info,
                f"batch_size {cfg.batch_size} is not divisible by {info.world_size} ranks; "
                f"using {global_batch}",
            )

        audio_dim, w = int(train_data.audio_dim), int(train_data.w)
        if data_id is None:
            data_id = f"windows={len(train_data)};w={w};audio_dim={audio_dim}"
        fingerprint = config_fingerprint(cfg, audio_dim, data_id)

        # Seed everything before building the model so that its initialisation is reproducible.
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        prior = fit_prior(train_data) if cfg.preconditioning == "wiener" else None
        denoiser = build_denoiser(cfg.preset, audio_dim, prior=prior, frames=w, **cfg.model_overrides).to(
            device
        )
        ema = EMA(denoiser, cfg.ema_decay, cfg.ema_warmup)
        optimizer = torch.optim.AdamW(
            denoiser.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        autocast, fp16 = _autocast(device, cfg)
        scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        model_args = _model_args(cfg, audio_dim, denoiser)

        start_step = 0
        ckpt = _resume_state(checkpoint_path, fingerprint, cfg.steps, resume, info)
        fresh = ckpt is None
        if ckpt is not None:
            denoiser.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if fp16 and ckpt["scaler"]:
                scaler.load_state_dict(ckpt["scaler"])
            _restore_rng_state(ckpt["rng"])
            start_step = int(ckpt["step"])
            _say(info, f"resuming {checkpoint_path} at step {start_step}")
            del ckpt  # free the host copy of the weights before training

        model: nn.Module = denoiser
        if info.distributed:
            model = DistributedDataParallel(
                denoiser, device_ids=[device.index] if device.type == "cuda" else None
            )

        parameters = count_parameters(denoiser)
        sampler = _WindowSampler(len(train_data), global_batch, cfg.seed)
        noise_gen = torch.Generator()  # CPU: training_loss draws on CPU, so runs agree across devices
        rollout_gen = torch.Generator()
        fetch = lambda s: train_data.batch(sampler.indices(s, info.rank, info.world_size))  # noqa: E731
        prefetch = _Prefetcher(fetch, enabled=device.type != "cpu")
        params = [p for p in denoiser.parameters() if p.requires_grad]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        base_extra = {
            "train_config": _plain(cfg),
            "data_id": data_id,
            "world_size": info.world_size,
            "device": str(device),
            **(extra or {}),
        }

        def checkpoint(step: int) -> None:
            if info.is_main:
                save_checkpoint(
                    checkpoint_path,
                    model_args=model_args,
                    model=denoiser,
                    ema=ema,
                    optimizer=optimizer,
                    scaler=scaler,
                    step=step,
                    rng=_rng_state(),
                    config_fingerprint=fingerprint,
                    extra=base_extra,
                )
            _barrier(info, device)

        def validate(step: int) -> None:
            if val_data is None or cfg.val_every <= 0 or cfg.val_batches <= 0 or len(val_data) == 0:
                return
            metrics = validation_loss(
                ema.shadow,
                val_data,
                cfg.loss,
                batch_size=global_batch,
                batches=cfg.val_batches,
                seed=cfg.seed,
                device=device,
                autocast=autocast,
                info=info,
            )
            val.append({"step": step, **metrics})
            if info.is_main:
                _say(info, f"step {step} val_loss {metrics['val_loss']:.4f} (dm {metrics['val_dm']:.4f})")
                if log is not None:
                    log(metrics, step)

        history: list[dict[str, float]] = []
        val: list[dict[str, float]] = []
        acc = _accumulator_dtype(device)
        sums = torch.zeros(5, dtype=acc, device=device)  # loss, dm, fbk, fac, grad norm
        interval_steps, interval_start = 0, time.perf_counter()
        if start_step < cfg.steps:
            _say(
                info,
                f"{parameters / 1e6:.2f}M parameters, {cfg.preset} preset on {device} x{info.world_size}, "
                f"batch {global_batch}, steps {start_step}..{cfg.steps}",
            )
        model.train()
        try:
            for step in range(start_step, cfg.steps):
                x0, cond = to_model_inputs(prefetch.get(step, cfg.steps), device)
                noise_gen.manual_seed(_seed_for(cfg.seed, _NOISE, info.rank, step))
                torch.manual_seed(_seed_for(cfg.seed, _DROPOUT, info.rank, step))
                if cfg.rollout_prob > 0 and step >= cfg.rollout_start:
                    rollout_gen.manual_seed(_seed_for(cfg.seed, _ROLLOUT, info.rank, step))
                    indices = sampler.indices(step, info.rank, info.world_size)
                    x0, cond = rollout_past(ema.shadow, train_data, indices, x0, cond, cfg, rollout_gen)
                with autocast:
                    terms = training_loss(model, x0, cond, cfg.loss, noise_gen)
                scaler.scale(terms["loss"]).backward()
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                ema.update(denoiser, step)

                done = step + 1
                sums += torch.stack(
                    [terms[k].detach().to(acc) for k in ("loss", "dm", "fbk", "fac")] + [grad_norm.to(acc)]
                )
                interval_steps += 1
                if (cfg.log_every > 0 and done % cfg.log_every == 0) or done == cfg.steps:
                    if info.distributed:
                        dist.all_reduce(sums)
                        sums /= info.world_size
                    means = (sums / interval_steps).tolist()  # .tolist() waits for the device
                    elapsed = time.perf_counter() - interval_start
                    record = {
                        "step": done,
                        "loss": means[0],
                        "dm": means[1],
                        "fbk": means[2],
                        "fac": means[3],
                        "lr": optimizer.param_groups[0]["lr"],
                        "grad_norm": means[4],
                        "windows_per_s": interval_steps * global_batch / max(elapsed, 1e-9),
                    }
                    if not math.isfinite(record["loss"]):
                        raise FloatingPointError(f"training loss is {record['loss']} at step {done}")
                    history.append(record)
                    if info.is_main:
                        _say(
                            info,
                            f"step {done}/{cfg.steps} loss {record['loss']:.4f} (dm {record['dm']:.4f} "
                            f"fbk {record['fbk']:.4f} fac {record['fac']:.4f}) "
                            f"grad {record['grad_norm']:.3f} "
                            f"{record['windows_per_s']:.0f} windows/s",
                        )
                        if log is not None:
                            log({k: v for k, v in record.items() if k != "step"}, done)
                    sums.zero_()
                    interval_steps, interval_start = 0, time.perf_counter()
                if cfg.val_every > 0 and (done % cfg.val_every == 0 or done == cfg.steps):
                    validate(done)
                if done == cfg.steps or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0):
                    checkpoint(done)
        finally:
            prefetch.close()

        if fresh and cfg.steps == 0:
            checkpoint(0)  # a zero-step run still leaves a loadable (untrained) model behind
        elif start_step == cfg.steps:
            _say(info, f"{checkpoint_path} is already at step {start_step}; nothing to train")
        return TrainResult(
            history=history,
            val=val,
            final_step=cfg.steps,
            parameters=parameters,
            checkpoint=checkpoint_path,
            seconds=time.perf_counter() - started,
            resumed_from=start_step,
            fingerprint=fingerprint,
            device=str(device),
            world_size=info.world_size,
            model=denoiser,
            ema=ema,
        )
