"""The ReactDiff training loop: AdamW on eq. 10, EMA weights, checkpoints that resume exactly, DDP.

Recipe (paper Table 7): AdamW, lr 1e-4, betas (0.95, 0.999), weight decay 1e-3, batch 100, 30k steps for
the paper preset (the demo preset's shorter recipe, 1700 steps at lr 1e-3, is params.yaml's default and
:class:`TrainConfig`'s), cosine noise schedule (:func:`reactdiff.noise.sample_training_sigmas`). Unlike the
official code (batch 1, sampling with the raw weights) the batch is 100 and the weights used for sampling
are an exponential moving average of the trained ones. Gradients are clipped by global norm; on CUDA the
forward pass runs under bf16 (or fp16 with a ``GradScaler``) autocast.

Randomness. Every random stream of a step is keyed by a counter rather than carried as state:

- batches: the training windows are visited in epochs, each epoch a permutation of all windows drawn by a
  ``torch.Generator`` seeded from ``(seed, epoch)``; the global batch of step ``s`` is positions
  ``[s * B, (s + 1) * B)`` of the concatenated epochs (sampling without replacement within an epoch), so
  it is a pure function of ``(seed, s, B, len(data))``. Under DDP every rank computes the same global
  batch and takes its own contiguous slice of ``B // world_size`` windows: ranks never see the same
  window in a step, and the global batches are those of a single-process run.
- noise levels, noise and the classifier-free-guidance drop: a second ``torch.Generator`` passed to
  :func:`reactdiff.losses.training_loss`, re-seeded at every step from ``(seed, rank, step)``;
- dropout: the global torch RNG, re-seeded at every step from ``(seed, rank, step)``;
- rollouts (below): a third generator, re-seeded at every step from ``(seed, rank, step)``.

Rollouts (exposure bias). The network is conditioned on the previous listener window. Trained only on
real previous windows, which already carry the listener's response to the speaker, it learns to continue
the past and to add little of its own response; when sampling, its past is its own output, which lacks
the part of the response it did not make, so each window adds a little more and the generated reaction
follows the speaker one to two windows late (issue 11 measured the smile cluster's cross-correlation
with the speaker peaking 19 frames late on validation rollouts against 4 when every window starts from
its real past). From step ``rollout_start`` on, a fraction ``rollout_prob`` of the rows that have a
previous window get, in place of their real past, the previous window as the EMA model itself samples
it (``rollout_steps`` ODE steps, from the real window before it and the previous speaker window). The
generated past does not end where the real one does (on the sample corpus the gap at the boundary was 8
times a real frame-to-frame step), and a real target after it teaches the network to jump at every
window boundary (measured: Jitter up 50 %, FD_learned 5 times worse). So the target eases out of the
generated past into the real window: ``x0 + (g - r) * (1 + cos(pi (t + 1) / E)) / 2`` at frame ``t < E``
and ``x0`` from frame ``E`` on (:func:`rollout_ease`), with ``g - r`` the gap between the two pasts' last
frames, is continuous in position and velocity at the boundary and is the real window from frame ``E``:
the network learns to take its own past where the speaker says the listener should be. ``E`` is
``rollout_ease_frames``. Easing over the whole window (``E = w``) leaves the target leaning towards
the generated past for most of the window, so a response that the past lacks is taught to come
``w / 2`` frames late on average, and a sampled chain, whose every past is generated, carries that lag
on: measured on the sample corpus, ``E`` 16 / 8 / 6 / 3 gave FRSyn 30.5 / 28.3 / 28.6 / 29.3 and FRCorr
1.31 / 1.42 / 1.41 / 1.35; below 6 the jumps come back (``E = 3``: Jitter 4.7e-5 and FD_learned 0.71
against 3.7e-5 and 0.24 at ``E = 8``, the default).

The step counter is therefore the whole state of the training streams; a checkpoint stores it with the
raw and EMA weights, the optimizer and grad-scaler states, and the global torch / CUDA / numpy / python
RNG states (restored on resume for any other user of them). A run interrupted at step ``k`` and resumed
reproduces the uninterrupted run bit for bit on CPU; on any device it continues with exactly the batches,
noise and dropout seeds the uninterrupted run would have used (the batches even under another world size).

Checkpoints hold only tensors and plain python values, so they load with
``torch.load(..., weights_only=True)``; :func:`load_denoiser` rebuilds the network from the stored
:class:`reactdiff.model.NetworkConfig` and loads the EMA weights (the ones meant for sampling).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from reactdiff import atomic, checkpoints
from reactdiff.config import TrainParams
from reactdiff.devices import select_device
from reactdiff.losses import LossConfig, training_loss
from reactdiff.model import (
    Conditions,
    Denoiser,
    NetworkConfig,
    ReactionUNet,
    build_denoiser,
    count_parameters,
)
from reactdiff.prior import WindowPrior
from reactdiff.samplers import sample
from reactdiff.windows import WindowBatch

__all__ = [
    "TrainConfig",
    "TrainResult",
    "DistInfo",
    "EMA",
    "WindowSource",
    "to_model_inputs",
    "evenly_spaced",
    "fit_prior",
    "config_fingerprint",
    "save_checkpoint",
    "load_checkpoint",
    "load_denoiser",
    "validation_loss",
    "ddp_context",
    "dist_info",
    "train",
]

CHECKPOINT_FORMAT = 1
PRECONDITIONINGS = ("wiener", "edm")
# Windows the prior is fitted on, evenly spaced over the split: its ~60k numbers are well determined by
# far fewer windows than a large corpus has.
PRIOR_MAX_WINDOWS = 50_000

# Stream identifiers mixed into the counter-based seeds (any distinct constants would do).
_BATCHES, _NOISE, _DROPOUT, _VALIDATION, _ROLLOUT = 1, 2, 3, 4, 5


class WindowSource(Protocol):
    """What :func:`train` needs from a split: :class:`reactdiff.windows.WindowDataset` or any look-alike."""

    w: int

    def __len__(self) -> int: ...

    @property
    def audio_dim(self) -> int: ...

    def batch(self, indices: np.ndarray, windows_back: int = 0) -> WindowBatch: ...

    def has_previous(self, indices: np.ndarray) -> np.ndarray: ...

    def frames_before(self, indices: np.ndarray) -> np.ndarray: ...


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


_RECIPE = TrainParams()
"""The shipped recipe (``train:`` in params.yaml, validated by :mod:`reactdiff.config`): the one set of
defaults, for the pipeline and for library callers alike. The paper preset's values (Table 7: 30000
steps at lr 1e-4) are set in params.yaml, not here."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (see the module docstring for the recipe).

    - ``preset`` / ``model_overrides``: the network (:func:`reactdiff.model.network_config`), e.g.
      ``{"use_frame_index": False}`` for the paper's ablations. ``frames`` is taken from the data.
    - ``preconditioning``: ``"wiener"`` fits a :class:`reactdiff.prior.WindowPrior` to the train
      listener windows (the denoiser corrects their Wiener filter); ``"edm"`` keeps EDM's scalar
      preconditioning with ``sigma_data = 0.5``, the setting whose samples jitter (issue 11).
    - ``batch_size``: the global batch; under DDP each of ``N`` ranks trains on ``batch_size // N``.
    - ``ema_warmup``: use ``min(ema_decay, (1 + s) / (10 + s))`` at update ``s``, so the average does not
      remember the random initialisation for thousands of steps.
    - ``grad_clip``: max global gradient norm; ``<= 0`` disables clipping (the norm is still logged).
    - ``amp`` / ``amp_dtype``: autocast on CUDA only (``"auto"`` = bf16 when supported, else fp16 with a
      grad scaler); ignored on other devices.
    - ``device``: ``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:<i>"``, ``"mps"``.
    - ``log_every`` / ``checkpoint_every`` / ``val_every``: in steps; ``0`` disables (the final step is
      always checkpointed, and validated when there is validation data and ``val_every > 0``).
    - ``val_batches``: validation batches of ``batch_size`` windows each, a fixed subset of the split.
    - ``rollout_prob`` / ``rollout_start`` / ``rollout_steps`` / ``rollout_ease_frames``: training on the
      model's own past (module docstring); ``rollout_prob = 0`` trains on real pasts only;
      ``rollout_ease_frames`` ``E`` (0: the whole window) is how many frames the target takes to ease
      out of the generated past.
    """

    preset: str = "demo"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    preconditioning: str = _RECIPE.preconditioning
    steps: int = _RECIPE.steps
    batch_size: int = _RECIPE.batch_size
    lr: float = _RECIPE.lr
    betas: tuple[float, float] = tuple(_RECIPE.betas)  # type: ignore[assignment]
    weight_decay: float = _RECIPE.weight_decay
    ema_decay: float = _RECIPE.ema_decay
    ema_warmup: bool = True
    grad_clip: float = _RECIPE.grad_clip
    amp: bool = _RECIPE.amp
    amp_dtype: str = "auto"
    device: str = _RECIPE.device
    seed: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    log_every: int = _RECIPE.log_every
    checkpoint_every: int = _RECIPE.checkpoint_every
    val_every: int = _RECIPE.val_every
    val_batches: int = _RECIPE.val_batches
    rollout_prob: float = _RECIPE.rollout_prob
    rollout_start: int = _RECIPE.rollout_start
    rollout_steps: int = _RECIPE.rollout_steps
    rollout_ease_frames: int = _RECIPE.rollout_ease_frames

    def __post_init__(self) -> None:
        # Configs arrive from YAML/JSON: lists for tuples, dicts for nested dataclasses.
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.model_overrides = dict(self.model_overrides)
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype must be 'auto', 'bf16' or 'fp16', got {self.amp_dtype!r}")
        for name in ("log_every", "checkpoint_every", "val_every", "val_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.preconditioning not in PRECONDITIONINGS:
            raise ValueError(
                f"preconditioning must be one of {PRECONDITIONINGS}, got {self.preconditioning!r}"
            )
        if not 0.0 <= self.rollout_prob <= 1.0:
            raise ValueError(f"rollout_prob must be in [0, 1], got {self.rollout_prob}")
        if self.rollout_ease_frames < 0:
            raise ValueError(
                f"rollout_ease_frames must be >= 0 (0: the whole window), got {self.rollout_ease_frames}"
            )
        if self.rollout_start < 0 or self.rollout_steps < 1:
            raise ValueError(
                f"rollout_start must be >= 0 and rollout_steps >= 1, got {self.rollout_start} and "
                f"{self.rollout_steps}"
            )
        if "frames" in self.model_overrides:
            raise ValueError("model_overrides may not set 'frames': the window size comes from the data")


def _plain(obj: Any) -> Any:
    """``obj`` as JSON-like python values (dict, list, str, int, float, bool, None)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} as a plain value")


# Settings that change what is computed. Steps are not among them (a longer run extends a shorter one),
# nor are device, amp, logging, checkpoint and validation cadences.
_FINGERPRINT_FIELDS = (
    "preset",
    "model_overrides",
    "preconditioning",
    "batch_size",
    "lr",
    "betas",
    "weight_decay",
    "ema_decay",
    "ema_warmup",
    "grad_clip",
    "seed",
    "loss",
    "rollout_prob",
    "rollout_start",
    "rollout_steps",
    "rollout_ease_frames",
)


def config_fingerprint(cfg: TrainConfig, audio_dim: int, data_id: str = "") -> str:
    """A 16-hex-digit hash of everything a checkpoint's training trajectory depends on.

    ``data_id`` names the training data (the stage passes a content hash of its windows); settings that
    do not change the trajectory (``steps``, device, amp, cadences) are left out, so a run may be
    extended or moved to another device and still resume.
    """
    payload = {name: _plain(getattr(cfg, name)) for name in _FINGERPRINT_FIELDS}
    payload.update(audio_dim=int(audio_dim), data_id=str(data_id), format=CHECKPOINT_FORMAT)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    # Metric sums stay on the device (no sync per step); MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _seed_for(*keys: int) -> int:
    """A 63-bit seed from non-negative integer keys (decorrelated even for adjacent keys)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> np.uint64(1))


# --------------------------------------------------------------------------------------------------
# Distributed context
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size from the initialised process group, else from torchrun's environment."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), local_rank, dist.get_world_size())
    return DistInfo(int(os.environ.get("RANK", "0")), local_rank, int(os.environ.get("WORLD_SIZE", "1")))


@contextlib.contextmanager
def ddp_context(device: torch.device | None = None) -> Iterator[DistInfo]:
    """Initialise the default process group when ``WORLD_SIZE > 1`` (torchrun) and tear it down after.

    The backend is nccl for a CUDA ``device`` and gloo otherwise; rendezvous is torchrun's ``env://``
    (``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``). A group that is already initialised
    is used as is and left alone. Single process: yields ``DistInfo()`` and does nothing.
    """
    info = dist_info()
    created = False
    if info.distributed and not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)
        created = True
        info = dist_info()
    try:
        yield info
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def _barrier(info: DistInfo, device: torch.device) -> None:
    if not info.distributed:
        return
    if device.type == "cuda":
        dist.barrier(device_ids=[device.index if device.index is not None else torch.cuda.current_device()])
    else:
        dist.barrier()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------------


class EMA:
    """Exponential moving average of a model's parameters, kept in a shadow copy of the model.

    ``update(model, step)``: ``shadow = d * shadow + (1 - d) * param`` for every parameter, with
    ``d = min(decay, (1 + step) / (10 + step))`` when ``warmup`` else ``decay``; buffers are copied.
    ``step`` is the 0-based index of the update. The shadow is in eval mode and never needs gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.shadow = copy.deepcopy(_unwrap(model)).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        """The decay used by the update of index ``step``."""
        if self.warmup:
            return min(self.decay, (1.0 + step) / (10.0 + step))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        source = _unwrap(model)
        shadow = [p for p in self.shadow.parameters()]
        params = [p.detach() for p in source.parameters()]
        if len(shadow) != len(params):
            raise ValueError("EMA.update: the model does not have the shadow's parameters")
        torch._foreach_mul_(shadow, d)
        torch._foreach_add_(shadow, params, alpha=1.0 - d)
        for b_shadow, b in zip(self.shadow.buffers(), source.buffers(), strict=True):
            b_shadow.copy_(b)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averaged ones."""
        _unwrap(model).load_state_dict(self.shadow.state_dict())

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow model's state dict (same keys as the model's)."""
        return self.shadow.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.shadow.load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def to_model_inputs(batch: WindowBatch, device: torch.device | str) -> tuple[Tensor, Conditions]:
    """``(x0 [B, w, 58], Conditions)`` on ``device`` from a numpy :class:`WindowBatch`.

    ``x0`` is the current listener window (the diffusion target); ``cond.past`` the previous listener
    window, ``cond.speaker_face`` ``[B, w, 58]``, ``cond.speaker_audio`` ``[B, w, A]``,
    ``cond.frame_index`` ``[B]`` long and ``cond.speaker_mask`` all ones.
    """
    non_blocking = torch.device(device).type == "cuda"

    def tensor(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(
            device=device, dtype=dtype, non_blocking=non_blocking
        )

    x0 = tensor(batch.listener, torch.float32)
    cond = Conditions.create(
        speaker_face=tensor(batch.speaker_face, torch.float32),
        speaker_audio=tensor(batch.speaker_audio, torch.float32),
        past=tensor(batch.past, torch.float32),
        frame_index=tensor(batch.frame_index, torch.long),
        history=None if batch.history is None else tensor(batch.history, torch.float32),
    )
    return x0, cond


def rollout_ease(frames: int, ease_frames: int = 0, **tensor_kwargs: Any) -> Tensor:
    """Weight ``[frames]`` of the past-to-real gap in a rollout row's target.

    ``(1 + cos(pi (t + 1) / E)) / 2`` at frame ``t < E``, 0 from frame ``E`` on (``E = ease_frames``; 0 or
    more than ``frames``: the whole window).

    Continuous in position and velocity at the boundary for any ``E``. Why ``E`` matters: until frame
    ``E`` the target still leans towards the generated past, so a response the past lacks is taught to
    arrive ``E / 2`` frames late on average, and a sampled chain inherits that lag window after window.
    """
    e = frames if ease_frames <= 0 else min(ease_frames, frames)
    t = torch.arange(1, frames + 1, **tensor_kwargs).clamp(max=e)  # from frame E on: cos(pi) = -1, weight 0
    return (1 + torch.cos(math.pi * t / e)) / 2


def rollout_past(
    denoiser: nn.Module,
    data: WindowSource,
    indices: np.ndarray,
    x0: Tensor,
    cond: Conditions,
    cfg: TrainConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Conditions]:
    """Give some rows the previous window as ``denoiser`` samples it, and a target that eases out of it.

    Each row of ``indices`` (the batch's windows in ``data``; targets ``x0`` ``[B, w, D]``) that has a
    previous window is picked with probability ``cfg.rollout_prob``. A picked row's past is sampled with
    ``cfg.rollout_steps`` ODE steps from the previous window's own conditions (the real window before it,
    the previous speaker window), and its target becomes ``x0 + gap * (1 + cos(pi (t + 1) / w)) / 2``
    with ``gap`` the generated past's last frame minus the real one's (module docstring, *Rollouts*);
    its listener history counts the generated past in place of the real one. Returns ``(x0, cond)``, the
    inputs themselves when no row is picked.
    """
    pick = torch.rand(len(indices), generator=generator).numpy() < cfg.rollout_prob
    rows = np.flatnonzero(pick & data.has_previous(indices))
    if rows.size == 0:
        return x0, cond
    device = cond.past.device
    _, previous = to_model_inputs(data.batch(indices[rows], windows_back=1), device)
    with torch.no_grad():
        generated = sample(
            denoiser,
            (rows.size, *cond.past.shape[1:]),
            previous,
            steps=cfg.rollout_steps,
            solver="ode",
            generator=generator,
            device=device,
        )
    generated = generated.to(cond.past.dtype)
    picked = torch.from_numpy(rows).to(device)
    w = x0.shape[1]
    ease = rollout_ease(w, cfg.rollout_ease_frames, device=device, dtype=x0.dtype)
    gap = generated[:, -1] - cond.past[picked, -1]  # [R, D]
    frames = torch.from_numpy(data.frames_before(indices[rows])).to(device=device, dtype=x0.dtype)
    x0, past, history = x0.clone(), cond.past.clone(), cond.listener_history.clone()
    x0[picked] += gap[:, None, :] * ease[None, :, None]
    history[picked] += (generated.sum(dim=1) - cond.past[picked].sum(dim=1)) / frames[:, None]
    past[picked] = generated
    return x0, dataclasses.replace(cond, past=past, history=history)


class _WindowSampler:
    """Global batch of step ``s``: positions ``[s * B, (s + 1) * B)`` of a stream of seeded epoch orders."""

    def __init__(self, n_windows: int, global_batch: int, seed: int) -> None:
        if n_windows < 1:
            raise ValueError("the training data has no windows")
        self.n = n_windows
        self.global_batch = global_batch
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            gen = torch.Generator().manual_seed(_seed_for(self.seed, _BATCHES, epoch))
            if len(self._cache) >= 2:  # a batch spans at most the current and the next epoch
                self._cache.pop(min(self._cache))
            self._cache[epoch] = torch.randperm(self.n, generator=gen).numpy()
        return self._cache[epoch]

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, offset)`` of the first window of step ``step``."""
        start = step * self.global_batch
        return start // self.n, start % self.n

    def global_indices(self, step: int) -> np.ndarray:
        """Window indices ``[global_batch]`` of step ``step``."""
        epoch, offset = self.position(step)
        parts, need = [], self.global_batch
        while need > 0:
            perm = self.permutation(epoch)
            take = perm[offset : offset + need]
            parts.append(take)
            need -= len(take)
            epoch, offset = epoch + 1, 0
        return np.concatenate(parts)

    def indices(self, step: int, rank: int, world_size: int) -> np.ndarray:
        """This rank's contiguous slice ``[global_batch // world_size]`` of the global batch."""
        per_rank = self.global_batch // world_size
        return self.global_indices(step)[rank * per_rank : (rank + 1) * per_rank]


def evenly_spaced(total: int, count: int) -> np.ndarray:
    """At most ``count`` distinct indices spread evenly over ``range(total)``, first and last included."""
    n = min(total, count)
    return np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))


def fit_prior(data: WindowSource, max_windows: int = PRIOR_MAX_WINDOWS) -> WindowPrior:
    """The :class:`reactdiff.prior.WindowPrior` of a split's listener windows given their previous windows
    (at most ``max_windows``, evenly spaced)."""
    batch = data.batch(evenly_spaced(len(data), max_windows))
    return WindowPrior.fit(batch.listener, past=batch.past, history=batch.history)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    """Global RNG states as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(np_state[0]),
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_version), "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["bit_generator"],
            n["key"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(
    path: Path | str,
    *,
    model_args: dict[str, Any],
    model: nn.Module,
    ema: EMA | None,
    optimizer: torch.optim.Optimizer | None,
    scaler: torch.amp.GradScaler | None,
    step: int,
    rng: dict[str, Any],
    config_fingerprint: str,
    extra: dict[str, Any],
) -> None:
    """Write a training checkpoint atomically (a reader never sees a half-written file).

    Keys: ``format``, ``model_args`` (``preset``, ``audio_dim``, ``overrides``, ``network`` = the full
    :class:`NetworkConfig` as a dict, ``sigma_data``), ``model`` (raw weights), ``ema`` (EMA weights, or
    ``None``), ``optimizer``, ``scaler``, ``step``, ``rng``, ``config_fingerprint``, ``extra``. Only
    tensors and plain python values, so :func:`load_checkpoint` never unpickles arbitrary objects.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_args": _plain(model_args),
        "model": _unwrap(model).state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else {},
        "step": int(step),
        "rng": rng,
        "config_fingerprint": str(config_fingerprint),
        "extra": _plain(extra),
    }
    with atomic.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training checkpoint: tensors and plain values only (:mod:`reactdiff.checkpoints`)."""
    fix = "train it again (`dvc repro train`, or `python -m pipelines.train`)"
    return checkpoints.load_checkpoint(
        path, CHECKPOINT_FORMAT, fix, map_location=map_location, kind="ReactDiff training"
    )


def _model_args(cfg: TrainConfig, audio_dim: int, denoiser: Denoiser) -> dict[str, Any]:
    return {
        "preset": cfg.preset,
        "audio_dim": int(audio_dim),
        "overrides": dict(cfg.model_overrides),
        "network": denoiser.config.to_dict(),
        "sigma_data": denoiser.sigma_data,
    }


def load_denoiser(
    path: Path | str, device: torch.device | str | None = None, use_ema: bool = True
) -> Denoiser:
    """The :class:`Denoiser` of a checkpoint, in eval mode, on ``device`` (``None``: automatic choice).

    The network is rebuilt from the stored :class:`NetworkConfig` (not from today's preset tables) and
    loaded with the EMA weights (``use_ema``, the ones meant for sampling) or the raw trained weights.
    """
    device = select_device("auto") if device is None else torch.device(device)
    ckpt = load_checkpoint(path)
    args = ckpt["model_args"]
    denoiser = Denoiser(ReactionUNet(NetworkConfig(**args["network"])), sigma_data=args["sigma_data"])
    state = ckpt["ema"] if use_ema else ckpt["model"]
    if state is None:
        raise ValueError(f"{path} holds no EMA weights; load it with use_ema=False")
    # A checkpoint from before the fitted prior has none: it was trained with EDM's isotropic one,
    # which is what the denoiser was built with.
    isotropic = {f"prior.{k}": v for k, v in denoiser.prior.state_dict().items()}
    denoiser.load_state_dict({**isotropic, **state})
    return denoiser.to(device).eval()


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
