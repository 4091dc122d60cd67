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
    load_checkpoint,
    load_optimizer_state,
    restore_rng_state,
    rng_state,
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
    config_fingerprint,
    seed_for,
)
from reactdiff.training.data import WindowSampler, evenly_spaced, fit_prior, rollout_past, to_model_inputs
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
        gen.manual_seed(seed_for(seed, _VALIDATION, j))
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
        run = _Trainer(cfg, train_data, val_data, checkpoint_path, info, device, log, data_id, extra, resume)
        run.run()
        return TrainResult(
            history=run.history,
            val=run.val,
            final_step=cfg.steps,
            parameters=count_parameters(run.denoiser),
            checkpoint=checkpoint_path,
            seconds=time.perf_counter() - started,
            resumed_from=run.start_step,
            fingerprint=run.fingerprint,
            device=str(device),
            world_size=info.world_size,
            model=run.denoiser,
            ema=run.ema,
        )


class _Trainer:
    """One run of :func:`train`: the network, its EMA and optimizer, the data streams and the records."""

    def __init__(
        self,
        cfg: TrainConfig,
        train_data: WindowSource,
        val_data: WindowSource | None,
        checkpoint_path: Path,
        info: DistInfo,
        device: torch.device,
        log: Callable[[dict[str, float], int], None] | None,
        data_id: str | None,
        extra: dict[str, Any] | None,
        resume: bool,
    ) -> None:
        self.cfg, self.train_data, self.val_data, self.log = cfg, train_data, val_data, log
        self.checkpoint_path, self.info, self.device = checkpoint_path, info, device
        if cfg.batch_size < info.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} is smaller than the world size {info.world_size}")
        self.global_batch = (cfg.batch_size // info.world_size) * info.world_size
        if self.global_batch != cfg.batch_size:
            _say(
                info,
                f"batch_size {cfg.batch_size} is not divisible by {info.world_size} ranks; "
                f"using {self.global_batch}",
            )

        audio_dim, w = int(train_data.audio_dim), int(train_data.w)
        if data_id is None:
            data_id = f"windows={len(train_data)};w={w};audio_dim={audio_dim}"
        self.fingerprint = config_fingerprint(cfg, audio_dim, data_id)

        # Seed everything before building the model so that its initialisation is reproducible.
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        prior = fit_prior(train_data) if cfg.preconditioning == "wiener" else None
        self.denoiser = build_denoiser(
            cfg.preset, audio_dim, prior=prior, frames=w, **cfg.model_overrides
        ).to(device)
        self.ema = EMA(self.denoiser, cfg.ema_decay, cfg.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.denoiser.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        self.autocast, fp16 = _autocast(device, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.model_args = _model_args(cfg, audio_dim, self.denoiser)
        self.start_step, self.fresh = self._resume(resume, fp16)

        self.model: nn.Module = self.denoiser
        if info.distributed:
            self.model = DistributedDataParallel(
                self.denoiser, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.sampler = WindowSampler(len(train_data), self.global_batch, cfg.seed)
        self.noise_gen = torch.Generator()  # CPU: training_loss draws on CPU, so runs agree across devices
        self.rollout_gen = torch.Generator()
        self.params = [p for p in self.denoiser.parameters() if p.requires_grad]
        self.max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        self.extra = {
            "train_config": _plain(cfg),
            "data_id": data_id,
            "world_size": info.world_size,
            "device": str(device),
            **(extra or {}),
        }
        self.history: list[dict[str, float]] = []
        self.val: list[dict[str, float]] = []
        self.acc = _accumulator_dtype(device)
        self.sums = torch.zeros(5, dtype=self.acc, device=device)  # loss, dm, fbk, fac, grad norm
        self.interval_steps, self.interval_start = 0, time.perf_counter()

    def _resume(self, resume: bool, fp16: bool) -> tuple[int, bool]:
        """The step to start from, and whether the run is fresh (no checkpoint to resume)."""
        ckpt = _resume_state(self.checkpoint_path, self.fingerprint, self.cfg.steps, resume, self.info)
        if ckpt is None:
            return 0, True
        self.denoiser.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        load_optimizer_state(self.optimizer, ckpt["optimizer"], self.denoiser, ckpt["model"])
        if fp16 and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        _say(self.info, f"resuming {self.checkpoint_path} at step {step}")
        return step, False

    def run(self) -> None:
        cfg, info = self.cfg, self.info
        if self.start_step < cfg.steps:
            _say(
                info,
                f"{count_parameters(self.denoiser) / 1e6:.2f}M parameters, {cfg.preset} preset on "
                f"{self.device} x{info.world_size}, batch {self.global_batch}, "
                f"steps {self.start_step}..{cfg.steps}",
            )
        fetch = lambda s: self.train_data.batch(self.sampler.indices(s, info.rank, info.world_size))  # noqa: E731
        prefetch = _Prefetcher(fetch, enabled=self.device.type != "cpu")
        self.model.train()
        try:
            for step in range(self.start_step, cfg.steps):
                self._optimise(step, prefetch.get(step, cfg.steps))
                done = step + 1
                if (cfg.log_every > 0 and done % cfg.log_every == 0) or done == cfg.steps:
                    self._report(done)
                if cfg.val_every > 0 and (done % cfg.val_every == 0 or done == cfg.steps):
                    self._validate(done)
                if done == cfg.steps or (cfg.checkpoint_every > 0 and done % cfg.checkpoint_every == 0):
                    self._checkpoint(done)
        finally:
            prefetch.close()
        if self.fresh and cfg.steps == 0:
            self._checkpoint(0)  # a zero-step run still leaves a loadable (untrained) model behind
        elif self.start_step == cfg.steps:
            _say(info, f"{self.checkpoint_path} is already at step {self.start_step}; nothing to train")

    def _optimise(self, step: int, batch: Any) -> None:
        """One step of AdamW on eq. 10, its streams keyed by the step (module docstring)."""
        cfg, info = self.cfg, self.info
        x0, cond = to_model_inputs(batch, self.device)
        self.noise_gen.manual_seed(seed_for(cfg.seed, _NOISE, info.rank, step))
        torch.manual_seed(seed_for(cfg.seed, _DROPOUT, info.rank, step))
        if cfg.rollout_prob > 0 and step >= cfg.rollout_start:
            self.rollout_gen.manual_seed(seed_for(cfg.seed, _ROLLOUT, info.rank, step))
            indices = self.sampler.indices(step, info.rank, info.world_size)
            x0, cond = rollout_past(
                self.ema.shadow, self.train_data, indices, x0, cond, cfg, self.rollout_gen
            )
        with self.autocast:
            terms = training_loss(self.model, x0, cond, cfg.loss, self.noise_gen)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.denoiser, step)
        self.sums += torch.stack(
            [terms[k].detach().to(self.acc) for k in ("loss", "dm", "fbk", "fac")] + [grad_norm.to(self.acc)]
        )
        self.interval_steps += 1

    def _report(self, done: int) -> None:
        """The averages since the last report: recorded, printed and logged (rank 0)."""
        if self.info.distributed:
            dist.all_reduce(self.sums)
            self.sums /= self.info.world_size
        means = (self.sums / self.interval_steps).tolist()  # .tolist() waits for the device
        elapsed = time.perf_counter() - self.interval_start
        record = {
            "step": done,
            "loss": means[0],
            "dm": means[1],
            "fbk": means[2],
            "fac": means[3],
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": means[4],
            "windows_per_s": self.interval_steps * self.global_batch / max(elapsed, 1e-9),
        }
        if not math.isfinite(record["loss"]):
            raise FloatingPointError(f"training loss is {record['loss']} at step {done}")
        self.history.append(record)
        if self.info.is_main:
            _say(
                self.info,
                f"step {done}/{self.cfg.steps} loss {record['loss']:.4f} (dm {record['dm']:.4f} "
                f"fbk {record['fbk']:.4f} fac {record['fac']:.4f}) "
                f"grad {record['grad_norm']:.3f} "
                f"{record['windows_per_s']:.0f} windows/s",
            )
            if self.log is not None:
                self.log({k: v for k, v in record.items() if k != "step"}, done)
        self.sums.zero_()
        self.interval_steps, self.interval_start = 0, time.perf_counter()

    def _validate(self, step: int) -> None:
        cfg, val_data = self.cfg, self.val_data
        if val_data is None or cfg.val_every <= 0 or cfg.val_batches <= 0 or len(val_data) == 0:
            return
        metrics = validation_loss(
            self.ema.shadow,
            val_data,
            cfg.loss,
            batch_size=self.global_batch,
            batches=cfg.val_batches,
            seed=cfg.seed,
            device=self.device,
            autocast=self.autocast,
            info=self.info,
        )
        self.val.append({"step": step, **metrics})
        if self.info.is_main:
            _say(self.info, f"step {step} val_loss {metrics['val_loss']:.4f} (dm {metrics['val_dm']:.4f})")
            if self.log is not None:
                self.log(metrics, step)

    def _checkpoint(self, step: int) -> None:
        if self.info.is_main:
            save_checkpoint(
                self.checkpoint_path,
                model_args=self.model_args,
                model=self.denoiser,
                ema=self.ema,
                optimizer=self.optimizer,
                scaler=self.scaler,
                step=step,
                rng=rng_state(),
                config_fingerprint=self.fingerprint,
                extra=self.extra,
            )
        _barrier(self.info, self.device)
